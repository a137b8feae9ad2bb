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
        /// hsmctl remove: the marker is going; the object is deleted once that is durable.
        case remove
    }

    struct Entry: Codable, Sendable {
        var kind: Kind
        /// The object being written (archive), released against (release) or dropped (remove).
        var object: String
        /// A re-archive's old object, to delete once the new marker is durable.
        var previous: String?
        var store: String
        var path: String
        var device: UInt64
        var inode: UInt64
        /// The file's handle (InodeHandle.encoded, hex): finds it after a rename.
        var handle: String?
        /// A release's file had these privileges, which punching strips (FilePrivileges):
        /// S_ISUID/S_ISGID bits, and the security.capability value in hex.
        var setIDBits: UInt32?
        var capability: String?

        /// The privileges noted, nil when none (or unreadable).
        var privileges: FilePrivileges? {
            let cap = capability.flatMap(Self.bytes(hex:))
            if capability != nil && cap == nil { return nil }
            let bits = setIDBits ?? 0
            if bits == 0 && cap == nil { return nil }
            return FilePrivileges(setIDBits: bits, capability: cap)
        }

        static func bytes(hex: String) -> [UInt8]? {
            let chars = Array(hex.utf8)
            guard chars.count % 2 == 0 else { return nil }
            var out: [UInt8] = []
            var i = 0
            while i + 1 < chars.count {
                guard let v = UInt8(String(decoding: chars[i...i + 1], as: UTF8.self), radix: 16) else { return nil }
                out.append(v)
                i += 2
            }
            return out
        }

        /// The same JSON JSONEncoder would write, by hand: two notes per file archived,
        /// and Foundation's encoder showed in migrate's profile.
        var json: [UInt8] {
            var fields = ["\"kind\":\(Self.quoted(kind.rawValue))", "\"object\":\(Self.quoted(object))",
                          "\"store\":\(Self.quoted(store))", "\"path\":\(Self.quoted(path))",
                          "\"device\":\(device)", "\"inode\":\(inode)"]
            if let previous { fields.append("\"previous\":\(Self.quoted(previous))") }
            if let handle { fields.append("\"handle\":\(Self.quoted(handle))") }
            if let setIDBits { fields.append("\"setIDBits\":\(setIDBits)") }
            if let capability { fields.append("\"capability\":\(Self.quoted(capability))") }
            return Array(("{" + fields.joined(separator: ",") + "}").utf8)
        }

        static func quoted(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
                default: out.unicodeScalars.append(u)
                }
            }
            return out + "\""
        }
    }

    struct NoteError: Error, CustomStringConvertible {
        let description: String
    }

    /// One slot in use, until `end`.
    struct Note: Sendable {
        let slot: Int
    }

    /// A slot file is opened for each write, not kept open: a chunk of 256 archives holds
    /// 256 notes, and hsmd's descriptors are better spent on events.
    private struct Slot {
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

    /// Notes an operation about to start.
    func begin(_ entry: Entry) throws(NoteError) -> Note {
        let what = "cannot note the \(entry.kind.rawValue) of \(entry.path) in progress"
        var bytes = entry.json
        bytes += [UInt8](repeating: 0x20, count: (bytes.count / Self.padding + 1) * Self.padding - bytes.count)
        let slot: Int
        do { slot = try acquire() } catch { throw NoteError(description: "\(what): \(error)") }
        do { try write(bytes, slot: slot) } catch {
            state.withLock { $0.free.append(slot) }
            throw NoteError(description: "\(what): \(error)")
        }
        state.withLock { $0.slots[slot]?.length = bytes.count }
        return Note(slot: slot)
    }

    /// The operation is over: its slot is blanked and reused.
    func end(_ note: Note) {
        guard let length = state.withLock({ $0.slots[note.slot]?.length }) else { return }
        // A failure here leaves a stale note: the next start then looks at the file again
        // and finds nothing to do.
        try? write([UInt8](repeating: 0x20, count: length), slot: note.slot)
        state.withLock { s in
            s.slots[note.slot]?.length = 0
            s.free.append(note.slot)
        }
    }

    /// The notes a previous process left (nil entry: unreadable). They stay in use, so no
    /// new operation reuses their slots, until `end`.
    func pending() -> [(note: Note, entry: Entry?)] {
        do { try load() } catch { return [] }
        let held = state.withLock { s in s.slots.filter { $0.value.length > 0 }.map(\.key) }
        return held.sorted().map { slot in
            let bytes = (try? FileDescriptor.open(slotPath(slot), [.readOnly, .noFollow])).flatMap { fd in
                defer { fd.close() }
                return try? fd.readAll(limit: 1 << 20)
            }
            return (Note(slot: slot), bytes.flatMap { try? JSONDecoder().decode(Entry.self, from: Data($0)) })
        }
    }

    private func slotPath(_ slot: Int) -> String { "\(directory)/slot-\(slot)" }

    /// A free slot, or a new one (its file is created by the first write).
    private func acquire() throws(SystemError) -> Int {
        try load()
        return state.withLock { s -> Int in
            if let slot = s.free.popLast() { return slot }
            defer { s.next += 1 }
            s.slots[s.next] = Slot(length: 0)
            return s.next
        }
    }

    /// Opens the slots a previous process left, once: blank ones become free, the others
    /// stay held until recovery ends them.
    private func load() throws(SystemError) {
        if state.withLock({ $0.loaded }) { return }
        try makeDirectory()
        var found: [Int: Slot] = [:]
        for name in try Directory.entries(directory) {
            guard name.hasPrefix("slot-"), let slot = Int(name.dropFirst(5)), slot >= 0 else { continue }
            let fd = try FileDescriptor.open(slotPath(slot), [.readOnly, .noFollow])
            let bytes = (try? fd.readAll(limit: 1 << 20)) ?? []
            fd.close()
            let blank = bytes.allSatisfy { $0 == 0x20 || $0 == 0x0A || $0 == 0 }
            found[slot] = Slot(length: blank ? 0 : bytes.count)
        }
        state.withLock { s in
            guard !s.loaded else { return }
            s.loaded = true
            s.slots = found
            s.free = found.filter { $0.value.length == 0 }.map(\.key).sorted(by: >)
            s.next = (found.keys.max() ?? -1) + 1
        }
    }

    private func write(_ bytes: [UInt8], slot: Int) throws(SystemError) {
        let fd = try FileDescriptor.open(slotPath(slot), [.writeOnly, .create, .noFollow], mode: 0o600)
        defer { fd.close() }
        try fd.write(bytes, at: 0)
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
