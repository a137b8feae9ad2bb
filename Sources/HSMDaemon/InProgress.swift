import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// Archives and releases that would leave something untrue behind if hsmd died in their
/// middle (an object no marker names; a punched file whose mtime says "changed"), noted
/// in `state_dir/in-progress/` while they run. The next start finishes or undoes each
/// (Archiver.recoverAtStart).
///
/// A note is a JSON entry padded with spaces in a reused slot file (`slot-N`); ending it
/// overwrites it with spaces. Creating and unlinking a file per operation instead cost
/// ext4 a scan of recently deleted inodes on every create: migrate of small files ran
/// 1.7x slower. Notes are written without fsync: they outlive a kill or a crash of hsmd,
/// not a power loss (README, Limits).
final class InProgress: Sendable {
    enum Kind: String, Codable, Sendable {
        case archive, release
    }

    struct Entry: Codable, Sendable {
        var kind: Kind
        /// The object being written (archive) or released against (release).
        var object: String
        /// A re-archive's old object, to delete once the new marker is durable.
        var previous: String?
        var store: String
        var path: String
        var device: UInt64
        var inode: UInt64
        /// The file's handle (InodeHandle.encoded, hex): finds it after a rename.
        var handle: String?
    }

    struct NoteError: Error, CustomStringConvertible {
        let description: String
    }

    /// One slot in use, until `end`.
    struct Note: Sendable {
        let slot: Int
    }

    private struct Slot {
        let fd: Int32
        /// Bytes of the note it holds (to blank on end); 0 when free.
        var length: Int
    }

    private struct State {
        var loaded = false
        var slots: [Int: Slot] = [:]
        var free: [Int] = []
        var next = 0
    }

    let directory: String
    private static let padding = 4096
    private let state = Mutex(State())

    init(stateDir: String) {
        directory = stateDir + "/in-progress"
    }

    deinit {
        state.withLock { s in for slot in s.slots.values { Glibc.close(slot.fd) } }
    }

    /// Notes an operation about to start.
    func begin(_ entry: Entry) throws(NoteError) -> Note {
        let what = "cannot note the \(entry.kind.rawValue) of \(entry.path) in progress"
        var bytes: [UInt8]
        do { bytes = Array(try JSONEncoder().encode(entry)) } catch { throw NoteError(description: "\(what): \(error)") }
        bytes += [UInt8](repeating: 0x20, count: (bytes.count / Self.padding + 1) * Self.padding - bytes.count)
        let (slot, fd): (Int, Int32)
        do { (slot, fd) = try acquire() } catch { throw NoteError(description: "\(what): \(error)") }
        do { try Self.write(bytes, fd: fd, slot: slotPath(slot)) } catch {
            state.withLock { $0.free.append(slot) }
            throw NoteError(description: "\(what): \(error)")
        }
        state.withLock { $0.slots[slot]?.length = bytes.count }
        return Note(slot: slot)
    }

    /// The operation is over: its slot is blanked and reused.
    func end(_ note: Note) {
        guard let (fd, length) = state.withLock({ s in s.slots[note.slot].map { ($0.fd, $0.length) } }) else { return }
        // A failure here leaves a stale note: the next start then looks at the file again
        // and finds nothing to do.
        try? Self.write([UInt8](repeating: 0x20, count: length), fd: fd, slot: slotPath(note.slot))
        state.withLock { s in
            s.slots[note.slot]?.length = 0
            s.free.append(note.slot)
        }
    }

    /// The notes a previous process left (nil entry: unreadable). They stay in use, so no
    /// new operation reuses their slots, until `end`.
    func pending() -> [(note: Note, entry: Entry?)] {
        do { try load() } catch { return [] }
        let held = state.withLock { s in s.slots.filter { $0.value.length > 0 }.map { ($0.key, $0.value.fd, $0.value.length) } }
        return held.sorted { $0.0 < $1.0 }.map { slot, fd, length in
            var bytes = [UInt8](repeating: 0, count: length)
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, 0) }
            let entry = n > 0 ? try? JSONDecoder().decode(Entry.self, from: Data(bytes[0..<n])) : nil
            return (Note(slot: slot), entry)
        }
    }

    private func slotPath(_ slot: Int) -> String { "\(directory)/slot-\(slot)" }

    private func acquire() throws(SystemError) -> (Int, Int32) {
        try load()
        if let (slot, fd) = state.withLock({ s -> (Int, Int32)? in
            guard let slot = s.free.popLast(), let fd = s.slots[slot]?.fd else { return nil }
            return (slot, fd)
        }) { return (slot, fd) }
        let slot = state.withLock { s -> Int in
            defer { s.next += 1 }
            return s.next
        }
        let fd = try FileDescriptor.open(slotPath(slot), [.readWrite, .create, .noFollow], mode: 0o600).rawValue
        state.withLock { $0.slots[slot] = Slot(fd: fd, length: 0) }
        return (slot, fd)
    }

    /// Opens the slots a previous process left, once: blank ones become free, the others
    /// stay held until recovery ends them.
    private func load() throws(SystemError) {
        if state.withLock({ $0.loaded }) { return }
        try makeDirectory()
        var found: [Int: Slot] = [:]
        for name in try Directory.entries(directory) {
            guard name.hasPrefix("slot-"), let slot = Int(name.dropFirst(5)), slot >= 0 else { continue }
            let fd = try FileDescriptor.open(slotPath(slot), [.readWrite, .noFollow]).rawValue
            let bytes = (try? FileDescriptor(rawValue: fd, path: slotPath(slot)).readAll(limit: 1 << 20)) ?? []
            let blank = bytes.allSatisfy { $0 == 0x20 || $0 == 0x0A || $0 == 0 }
            found[slot] = Slot(fd: fd, length: blank ? 0 : bytes.count)
        }
        state.withLock { s in
            guard !s.loaded else {
                for slot in found.values { Glibc.close(slot.fd) }
                return
            }
            s.loaded = true
            s.slots = found
            s.free = found.filter { $0.value.length == 0 }.map(\.key).sorted(by: >)
            s.next = (found.keys.max() ?? -1) + 1
        }
    }

    private static func write(_ bytes: [UInt8], fd: Int32, slot: String) throws(SystemError) {
        try FileDescriptor(rawValue: fd, path: slot).write(bytes, at: 0)
    }

    /// The directory, 0700; hsmd's own, so a looser mode is tightened.
    func makeDirectory() throws(SystemError) {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SystemError(errno: errno, operation: "mkdir", path: directory)
        }
        let st = try FileStat.of(path: directory)
        guard st.fileType == .directory else { throw SystemError(errno: ENOTDIR, operation: "mkdir", path: directory) }
        if st.mode & 0o077 != 0 && chmod(directory, 0o700) != 0 {
            throw SystemError(errno: errno, operation: "chmod 0700", path: directory)
        }
    }
}

extension InodeHandle {
    var hex: String { encoded.map { String(format: "%02x", $0) }.joined() }

    init?(hex: String) {
        var bytes: [UInt8] = []
        var it = hex.makeIterator()
        while let a = it.next() {
            guard let b = it.next(), let v = UInt8(String([a, b]), radix: 16) else { return nil }
            bytes.append(v)
        }
        self.init(encoded: bytes)
    }
}
