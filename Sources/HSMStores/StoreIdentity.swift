import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// Proof that a store directory is the store hsmd archived to (docs/ARCHITECTURE.md, invariant 8).
///
/// The directory carries `hsmd-store.json` (the store's name and a random id), written at
/// first use; hsmd remembers the id in `state_dir/stores.json`. The identity is
/// established at start and pinned to the directory's device and inode and the file's
/// bytes; archive and release check the pin first. A tmpfs or an empty bind mount over
/// the directory, an NFS store that is not mounted, a copy of the store or another store
/// all fail the check, and nothing is archived to or released against them.
///
/// First use versus wrong store: an empty directory is initialised only when hsmd has no
/// id remembered for the store. A directory without an identity file for a store hsmd
/// remembers is never initialised: that is a store that is not there.
public final class StoreIdentity: Sendable {
    public static let fileName = "hsmd-store.json"
    public static let memoryName = "stores.json"

    struct Content: Codable {
        var format: Int
        var store: String
        var id: String
        var created: String
    }

    struct Pin: Sendable {
        let device: UInt64
        let inode: UInt64
        let bytes: [UInt8]
        let id: String
    }

    public let storeName: String
    public let root: String
    /// state_dir/stores.json; nil: nothing is remembered (then only the pin protects).
    public let memoryPath: String?
    private let pin = Mutex<Pin?>(nil)
    /// Serializes read-modify-write of the memory file, shared by every store.
    private static let memoryLock = Mutex<Void>(())

    public init(storeName: String, root: String, stateDir: String?) {
        self.storeName = storeName
        self.root = root
        memoryPath = stateDir.map { $0 + "/" + Self.memoryName }
    }

    var filePath: String { root + "/" + Self.fileName }

    /// What `establish` found, for the log.
    public enum Outcome: Equatable, Sendable {
        case verified(id: String)
        case initialised(id: String)
        case adopted(id: String, why: String)
        /// Not usable: archive and release are refused until a later check succeeds.
        case refused(String)
    }

    /// At start: verify the identity file against the remembered id, initialise an empty
    /// directory on first use, or refuse. Pins the directory on success.
    @discardableResult
    public func establish() -> Outcome { establish(mayInitialise: true) }

    /// Before archive and release: nil when the store is the one pinned (or, if nothing
    /// is pinned yet, when it now proves its identity), else what is wrong.
    /// `readingFile` false: the directory's device and inode only.
    public func problem(readingFile: Bool = true) -> String? {
        guard let p = pin.withLock({ $0 }) else {
            if case .refused(let why) = establish(mayInitialise: false) { return why }
            return nil
        }
        let st: FileStat
        do { st = try FileStat.of(path: root, followLinks: true) } catch {
            return "store \(storeName): \(root): \(error)"
        }
        guard st.device == p.device && st.inode == p.inode else {
            return "store \(storeName): \(root) is not the directory whose identity hsmd verified (device \(Self.describe(p.device)) inode \(p.inode) then, device \(Self.describe(st.device)) inode \(st.inode) now): something is mounted over it, or it was remounted or replaced; archive and release are refused while it is so (if the store was remounted or moved on purpose, restart hsmd to verify it again)"
        }
        guard readingFile else { return nil }
        // The bytes, not their meaning: this runs for every file released.
        switch readBytes() {
        case .success(let bytes) where bytes == p.bytes: return nil
        case .failure(let e) where e.errno == ENOENT:
            return "store \(storeName): the identity file \(filePath) of store \(p.id) is gone; archive and release are refused"
        default:
            return "store \(storeName): the identity file \(filePath) changed since hsmd verified it (store \(p.id)); archive and release are refused"
        }
    }

    /// "tmpfs" or "ramfs" when the store lives on a filesystem that forgets everything at
    /// unmount or reboot: worth a warning (tests and demos use one on purpose).
    public var volatileFilesystem: String? {
        (try? Filesystem.typeMagic(of: root)).flatMap { Filesystem.volatileTypes[$0] }
    }

    /// The id the store proved, if it did.
    public var id: String? { pin.withLock { $0?.id } }

    // MARK: Establishing

    private func establish(mayInitialise: Bool) -> Outcome {
        let st: FileStat
        do { st = try FileStat.of(path: root, followLinks: true) } catch {
            return .refused("store \(storeName): \(root): \(error)")
        }
        guard st.fileType == .directory else { return .refused("store \(storeName): \(root) is not a directory") }
        let memory: Remembered?
        do { memory = try rememberedStore() } catch { return .refused("store \(storeName): \(error)") }
        let remembered = memory?.id
        // Where hsmd last used the remembered store, when the config now names another path.
        let there = memory.map { $0.path == root ? "there" : "at \($0.path)" } ?? "there"
        let help = "remove the entry \"\(storeName)\" from \(memoryPath ?? Self.memoryName) and restart hsmd only if the old store is lost for good (files released to it then read EIO)"
        switch readFile() {
        case .unreadable(let why):
            return .refused("store \(storeName): the identity file \(filePath) is unreadable (\(why)); archive and release are refused")
        case .present(let bytes, let content):
            guard content.store == storeName else {
                return .refused("store \(storeName): \(root) holds store \"\(content.store)\" (id \(content.id)), not \"\(storeName)\"; name the store \"\(content.store)\" in the config or point it at the right directory")
            }
            if let remembered, remembered != content.id {
                return .refused("store \(storeName): \(root) holds store id \(content.id), but hsmd archived to store id \(remembered) \(there); mount the right store, or \(help)")
            }
            var outcome = Outcome.verified(id: content.id)
            if let memory, memory.path != root {
                // The same store, moved: remember where it is now.
                do { try remember(content.id) } catch { return .refused("store \(storeName): \(error)") }
            }
            if remembered == nil {
                do { try remember(content.id) } catch { return .refused("store \(storeName): \(error)") }
                outcome = .adopted(id: content.id, why: "its identity file was not yet remembered in \(memoryPath ?? "state_dir")")
            }
            pin.withLock { $0 = Pin(device: st.device, inode: st.inode, bytes: bytes, id: content.id) }
            return outcome
        case .missing:
            if let remembered {
                return .refused("store \(storeName): \(root) has no identity file, but hsmd archived to store id \(remembered) \(there): is the store's filesystem mounted (an empty directory, NFS not mounted, a bind mount over it), or has store.path changed? Archive and release are refused; to start a new store there, \(help)")
            }
            let entries: [String]
            do { entries = try Directory.entries(root).filter { $0 != "lost+found" } } catch {
                return .refused("store \(storeName): cannot list \(root): \(error)")
            }
            let preIdentity = entries == ["objects"]
            guard entries.isEmpty || preIdentity else {
                return .refused("store \(storeName): \(root) is not empty and has no identity file: not an hsmd store (or its identity file was removed); archive and release are refused")
            }
            guard mayInitialise else {
                return .refused("store \(storeName): \(root) has no identity file yet (hsmd writes one at start); archive and release are refused")
            }
            let content = Content(format: 1, store: storeName, id: ObjectID.random().hex,
                                  created: ISO8601DateFormatter().string(from: Date()))
            do {
                try writeFile(content)
                try remember(content.id)
            } catch {
                return .refused("store \(storeName): \(error)")
            }
            guard case .present(let bytes, _) = readFile() else {
                return .refused("store \(storeName): the identity file \(filePath) just written cannot be read back")
            }
            pin.withLock { $0 = Pin(device: st.device, inode: st.inode, bytes: bytes, id: content.id) }
            return preIdentity ? .adopted(id: content.id, why: "a store from before identity files") : .initialised(id: content.id)
        }
    }

    // MARK: The identity file

    enum FileState {
        case present([UInt8], Content)
        case missing
        case unreadable(String)
    }

    private func readBytes() -> Result<[UInt8], SystemError> {
        do {
            let fd = try FileDescriptor.open(filePath, [.readOnly, .noFollow])
            defer { fd.close() }
            return .success(try fd.readAll(limit: 64 << 10))
        } catch {
            return .failure(error)
        }
    }

    func readFile() -> FileState {
        let bytes: [UInt8]
        switch readBytes() {
        case .success(let b): bytes = b
        case .failure(let error): return error.errno == ENOENT ? .missing : .unreadable("\(error)")
        }
        guard let content = try? JSONDecoder().decode(Content.self, from: Data(bytes)),
              content.format == 1, ObjectID(hex: content.id) != nil else {
            return .unreadable("not an hsmd store identity")
        }
        return .present(bytes, content)
    }

    private func writeFile(_ content: Content) throws(SystemError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let json = try? encoder.encode(content) else {
            throw SystemError(errno: EINVAL, operation: "encode the store identity", path: filePath)
        }
        try Self.writeDurably(Array(json) + [0x0A], to: filePath, directory: root)
    }

    /// Writes `bytes` to a temporary name, fsyncs it, renames it into place and fsyncs
    /// the directory: the file is whole and on disk, or absent.
    static func writeDurably(_ bytes: [UInt8], to path: String, directory: String) throws(SystemError) {
        let temporary = path + ".partial"
        let fd = try FileDescriptor.open(temporary, [.writeOnly, .create, .truncate, .noFollow], mode: 0o600)
        do {
            try fd.write(bytes, at: 0)
            try fd.sync()
            fd.close()
        } catch {
            fd.close()
            unlink(temporary)
            throw error
        }
        if rename(temporary, path) != 0 {
            let e = errno
            unlink(temporary)
            throw SystemError(errno: e, operation: "rename", path: path)
        }
        let dir = try FileDescriptor.open(directory, [.directory])
        defer { dir.close() }
        try dir.sync()
    }

    // MARK: The memory in state_dir

    private struct Remembered: Codable {
        var id: String
        var path: String
    }

    private func rememberedStore() throws(SystemError) -> Remembered? {
        guard let memoryPath else { return nil }
        return try Self.memoryLock.withLock { _ throws(SystemError) -> Remembered? in try Self.loadMemory(memoryPath)[storeName] }
    }

    private func remember(_ id: String) throws(SystemError) {
        guard let memoryPath else { return }
        try Self.memoryLock.withLock { _ throws(SystemError) in
            var all = try Self.loadMemory(memoryPath)
            all[storeName] = Remembered(id: id, path: root)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            guard let json = try? encoder.encode(all) else {
                throw SystemError(errno: EINVAL, operation: "encode store ids", path: memoryPath)
            }
            try Self.writeDurably(Array(json) + [0x0A], to: memoryPath, directory: (memoryPath as NSString).deletingLastPathComponent)
        }
    }

    /// A missing file remembers nothing; an unreadable one is an error (never "nothing":
    /// that would let an empty directory pass for a new store).
    private static func loadMemory(_ path: String) throws(SystemError) -> [String: Remembered] {
        let bytes: [UInt8]
        do {
            let fd = try FileDescriptor.open(path, [.readOnly, .noFollow])
            defer { fd.close() }
            bytes = try fd.readAll(limit: 1 << 20)
        } catch {
            if error.errno == ENOENT { return [:] }
            throw error
        }
        guard let all = try? JSONDecoder().decode([String: Remembered].self, from: Data(bytes)) else {
            throw SystemError(errno: EINVAL, operation: "read the remembered store ids (damaged; fix or remove it)", path: path)
        }
        return all
    }

    /// major:minor (FileStat keeps the major in the high 32 bits).
    private static func describe(_ dev: UInt64) -> String { "\(dev >> 32):\(dev & 0xffff_ffff)" }
}
