import Foundation
import Glibc
import HSMCore
import HSMKernel

/// Archives and releases that would leave something untrue behind if hsmd died in their
/// middle (an object no marker names; a punched file whose mtime says "changed"), noted
/// in `state_dir/in-progress/` while they run. The next start finishes or undoes each
/// (Archiver.recoverAtStart).
///
/// One small file per operation, written without fsync: it outlives a kill or a crash of
/// hsmd, not a power loss (README, Limits).
struct InProgress: Sendable {
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

    let directory: String

    init(stateDir: String) {
        directory = stateDir + "/in-progress"
    }

    /// Notes an operation about to start; returns the note's name for `end`.
    func begin(_ entry: Entry) throws(NoteError) -> String {
        let name = "\(entry.kind.rawValue)-\(entry.object)"
        let path = directory + "/" + name
        let bytes: [UInt8]
        do { bytes = Array(try JSONEncoder().encode(entry)) } catch {
            throw NoteError(description: "cannot encode the in-progress note for \(entry.path): \(error)")
        }
        var fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate, .noFollow], mode: 0o600) } catch {
            guard error.errno == ENOENT else { throw NoteError(description: "cannot note the \(entry.kind.rawValue) of \(entry.path) in progress: \(error)") }
            do {
                try makeDirectory()
                fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate, .noFollow], mode: 0o600)
            } catch {
                throw NoteError(description: "cannot note the \(entry.kind.rawValue) of \(entry.path) in progress: \(error)")
            }
        }
        defer { fd.close() }
        do { try fd.write(bytes, at: 0) } catch {
            unlink(path)
            throw NoteError(description: "cannot note the \(entry.kind.rawValue) of \(entry.path) in progress: \(error)")
        }
        return name
    }

    func end(_ name: String) {
        unlink(directory + "/" + name)
    }

    /// The notes a previous process left, oldest first; nil entry: unreadable.
    func pending() -> [(name: String, entry: Entry?)] {
        guard let names = try? Directory.entries(directory) else { return [] }
        return names.sorted().map { name in
            let bytes = (try? FileDescriptor.open(directory + "/" + name, [.readOnly, .noFollow])).flatMap { fd in
                defer { fd.close() }
                return try? fd.readAll(limit: 1 << 20)
            }
            return (name, bytes.flatMap { try? JSONDecoder().decode(Entry.self, from: Data($0)) })
        }
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
