import HSMKernel

/// The states `hsmctl status` reports.
public enum HSMState: String, Codable, Sendable, CaseIterable {
    /// All data local and no copy in a store.
    case resident
    /// All data local and an identical copy in the store.
    case archived
    /// Every block the last release made offline is still offline.
    case released
    /// Released, then some blocks came back.
    case partial
    /// Changed since it was archived: the stored copy is stale.
    case dirty
    /// The marker cannot be decoded, or the object it names is missing or failed its checksums.
    case damaged
}

public struct FileStatus: Sendable, Equatable {
    public var state: HSMState
    public var offlineBytes: Int64
    public var object: ObjectID?
    public var detail: String?

    /// Derives a file's state from its stat and the raw `trusted.hsm` value.
    /// `objectExists` is asked only when blocks are offline.
    public static func derive(stat: FileStat, markerBytes: [UInt8]?, objectExists: (ObjectID) -> Bool) -> FileStatus {
        guard let bytes = markerBytes else { return FileStatus(state: .resident, offlineBytes: 0) }
        do { return derive(stat: stat, marker: try MarkerCodec.decode(bytes), objectExists: objectExists) } catch {
            return FileStatus(state: .damaged, offlineBytes: 0, detail: "\(error)")
        }
    }

    /// The same, from a decoded marker (nil: no marker).
    public static func derive(stat: FileStat, marker: Marker?, objectExists: (ObjectID) -> Bool) -> FileStatus {
        guard let marker else { return FileStatus(state: .resident, offlineBytes: 0) }
        let offline = marker.offlineBytes(currentSize: stat.size)
        var s = FileStatus(state: .archived, offlineBytes: offline, object: marker.object)
        let offlineBlocks = marker.offline.setIndices().filter { marker.layout.range(ofBlock: $0).lowerBound < stat.size }
        if marker.flags.contains(.objectDamaged) {
            s.state = .damaged
            s.detail = "a recall found object \(marker.object) missing or corrupt"
        } else if !offlineBlocks.isEmpty && !objectExists(marker.object) {
            s.state = .damaged
            s.detail = "object \(marker.object) is missing from the store"
        } else if stat.size != marker.size || stat.mtimeNs != marker.mtimeNs {
            s.state = .dirty
        } else if offlineBlocks.isEmpty {
            s.state = .archived
        } else {
            s.state = offlineBlocks.count >= Int(marker.releasedBlocks) ? .released : .partial
        }
        return s
    }
}
