import HSMKernel

/// Why bytes of a file are wanted; it decides which offline blocks must be local first.
///
/// A pre-access event looks the same for a read, a write and every fallocate mode
/// (docs/KERNEL-FACTS.md): same mask, same page-rounded range, same fd. What differs is what
/// the operation does with the rest of the file, so each intent names the worst case it
/// must cover.
public enum AccessIntent: Sendable, Equatable {
    /// hsmctl recall, archive, a whole-file recall at open: exactly the bytes asked for
    /// (and, in a file cut below its archived size, the block holding the new end).
    case request
    /// An event that moves no data: its range, plus the block holding the end of the file
    /// when the end lies inside it. An O_APPEND write reports the fd's position, not the
    /// end it writes at, and extending a file (a write past the end, ftruncate up: btrfs)
    /// rewrites the page at the old end; a hole there would become zeros.
    case event
    /// An event that may be fallocate INSERT_RANGE or COLLAPSE_RANGE, which shift all data
    /// after the range's start: everything from the offset to the end of the file.
    case shiftingEvent
    /// A count-0 event raised by ftruncate or truncate to a page-aligned size: nothing
    /// that is cut needs to come back; extending needs the block at the old end (as
    /// `.event`). A cut's new partial last block comes back at the next access (the file is
    /// then below its archived size, and the recall engine brings that block back first).
    case truncation
}

public enum AccessPlan {
    /// The offline blocks that must be local before the access in `range` may go on, in a
    /// file now `fileSize` bytes long whose marker is `marker`. A nil range is the whole
    /// file. Blocks past the end of the file are never needed (they were cut off).
    /// The one place that turns an access into blocks: the event loop (to answer at once
    /// when nothing is needed) and the recall engine (to recall) both ask it.
    public static func neededBlocks(_ range: AccessRange?, _ intent: AccessIntent, fileSize: Int64, marker: Marker) -> [Int] {
        let access = range ?? .wholeFile
        let layout = marker.layout
        // The bytes the bitmap describes that still exist.
        let live = min(max(fileSize, 0), marker.size)
        guard live > 0 else { return [] }
        let wanted: Range<Int64>
        switch intent {
        case .request, .event: wanted = access.bytes(fileSize: fileSize)
        case .shiftingEvent: wanted = access.offset..<max(access.offset, fileSize)
        case .truncation: wanted = 0..<0
        }
        var needed = marker.offline.setIndices(in: layout.blocks(covering: wanted.clamped(to: 0..<live)))

        // The block holding the last byte, when the end of file lies inside it. Past the
        // archived size there is no offline data, so nothing is needed there.
        let endInsideBlock = fileSize % layout.blockSize != 0 && fileSize <= marker.size
        let wantsEnd: Bool
        switch intent {
        case .request: wantsEnd = endInsideBlock && fileSize < marker.size
        case .event, .shiftingEvent: wantsEnd = endInsideBlock
        case .truncation: wantsEnd = endInsideBlock && access.offset >= fileSize
        }
        let last = Int((live - 1) >> Int64(marker.blockShift))
        if wantsEnd && last < marker.offline.count && marker.offline[last] && needed.last != last {
            needed.append(last)
            needed.sort()
        }
        return needed
    }

    /// Whether what the accessing program is doing could change the answer, so that it is
    /// worth looking at (`BlockedThreads`): a count-0 event that may be a truncation, or,
    /// on a filesystem that can shift data (`canShift`: ext4, xfs), an event with offline
    /// blocks after its range.
    public static func intentMatters(_ range: AccessRange?, fileSize: Int64, marker: Marker, canShift: Bool) -> Bool {
        let access = range ?? .wholeFile
        let plain = neededBlocks(range, .event, fileSize: fileSize, marker: marker)
        if access.toEndOfFile {
            return plain != neededBlocks(range, .truncation, fileSize: fileSize, marker: marker)
        }
        return canShift && plain != neededBlocks(range, .shiftingEvent, fileSize: fileSize, marker: marker)
    }

    /// The intent to assume when the program cannot be looked at: the worst case.
    public static func conservativeIntent(_ range: AccessRange?, canShift: Bool) -> AccessIntent {
        if (range ?? .wholeFile).toEndOfFile { return .event }  // already offset..EOF
        return canShift ? .shiftingEvent : .event
    }
}
