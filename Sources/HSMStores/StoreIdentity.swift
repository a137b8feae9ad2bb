import Foundation
import Glibc
import HSMCore
import HSMKernel
import Synchronization

/// What one read of a store's identity found.
public enum IdentityRead: Sendable, Equatable {
    case present([UInt8])
    case missing
    /// Cannot be read now (an I/O error, a service that does not answer): why.
    case unreadable(String)
}

/// With no identity at the store's place and no id remembered: may hsmd write one?
public enum FirstUse: Sendable, Equatable {
    /// Nothing there: a new store.
    case empty
    /// Objects of a store from before identities: adopted.
    case preIdentity
    /// Something that is not an hsmd store, or the place cannot be looked at: refused (why).
    case refused(String)
}

/// Where a kind of store keeps its identity (docs/ARCHITECTURE.md, invariant 8): a posix
/// store's directory, an s3 store's bucket and prefix. StoreIdentity holds the rules; a
/// location only reads and writes, and names things for the messages.
public protocol IdentityLocation: Sendable {
    /// The store's place as messages name it and `stores.json` remembers it.
    var place: String { get }
    /// "directory", "bucket": what to point the store at.
    var kind: String { get }
    /// "identity file", "identity object".
    var identityNoun: String { get }
    /// The identity itself, for messages ("the identity file /srv/tier1/hsmd-store.json").
    var identityName: String { get }
    /// Asked when a store hsmd remembers has no identity: what the operator should look at.
    var absentHint: String { get }
    /// What to do when the place holds another store.
    var wrongStoreRemedy: String { get }
    /// Added to the message when a pinned identity is gone: what it means for this kind.
    var goneHint: String { get }
    /// A check after start may write the identity of a store never used (nothing
    /// remembered): an s3 service that did not answer at start gets one once it does.
    var initialisesOnCheck: Bool { get }
    /// The place is there and of the right kind; the mark of the place itself (posix: the
    /// directory's device and inode), nil where it has none. Failure: why, for the message.
    func placeMark() -> Result<PlaceMark?, PlaceProblem>
    /// Why the place is no longer the one pinned (`pinned` and `now` differ).
    func placeMoved(pinned: PlaceMark, now: PlaceMark) -> String
    func readIdentity() -> IdentityRead
    /// Writes the identity whole (or not at all); nil when done, else why not.
    func writeIdentity(_ bytes: [UInt8]) -> String?
    func firstUse() -> FirstUse
    /// "tmpfs" or "ramfs" when the place forgets everything at unmount or reboot.
    var volatileFilesystem: String? { get }
}

extension IdentityLocation {
    public var volatileFilesystem: String? { nil }
}

/// A place's own mark, pinned beside the identity's bytes.
public struct PlaceMark: Sendable, Equatable {
    public let device: UInt64
    public let inode: UInt64
}

public struct PlaceProblem: Error, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Proof that a store is the store hsmd archived to (docs/ARCHITECTURE.md, invariant 8).
///
/// The store carries `hsmd-store.json` (the store's name and a random id), written at
/// first use; hsmd remembers the id in `state_dir/stores.json`. The identity is
/// established at start and pinned to its bytes (and, for a directory, the directory's
/// device and inode); archive and release check the pin first. A tmpfs or an empty bind
/// mount over the directory, an NFS store that is not mounted, a copy of the store, a
/// bucket emptied or re-created, an endpoint that reaches another cluster, or another
/// store all fail the check, and nothing is archived to or released against them.
///
/// First use versus wrong store: a store is initialised only when hsmd has no id
/// remembered for it. A store without an identity that hsmd remembers is never
/// initialised: that is a store that is not there.
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
        let mark: PlaceMark?
        let bytes: [UInt8]
        let id: String
    }

    public let storeName: String
    public let location: any IdentityLocation
    /// state_dir/stores.json; nil: nothing is remembered (then only the pin protects).
    public let memoryPath: String?
    private let pin = Mutex<Pin?>(nil)
    /// One establish at a time: two checks of a store not yet pinned must not both
    /// initialise it.
    private let establishing = Mutex<Void>(())
    /// Serializes read-modify-write of the memory file, shared by every store.
    private static let memoryLock = Mutex<Void>(())

    public init(storeName: String, location: any IdentityLocation, stateDir: String?) {
        self.storeName = storeName
        self.location = location
        memoryPath = stateDir.map { $0 + "/" + Self.memoryName }
    }

    /// A posix store's identity: `root/hsmd-store.json`.
    public convenience init(storeName: String, root: String, stateDir: String?) {
        self.init(storeName: storeName, location: DirectoryIdentity(root: root), stateDir: stateDir)
    }

    /// What `establish` found, for the log.
    public enum Outcome: Equatable, Sendable {
        case verified(id: String)
        case initialised(id: String)
        case adopted(id: String, why: String)
        /// Not usable: archive and release are refused until a later check succeeds.
        case refused(String)
    }

    /// At start: verify the identity against the remembered id, initialise an empty store
    /// on first use, or refuse. Pins the identity on success.
    @discardableResult
    public func establish() -> Outcome { establish(mayInitialise: true) }

    /// Before archive and release: nil when the store is the one pinned (or, if nothing
    /// is pinned yet, when it now proves its identity), else what is wrong.
    /// `readingFile` false: the place's own mark only (a stat for a directory, nothing
    /// for a bucket).
    public func problem(readingFile: Bool = true) -> String? {
        guard let p = pin.withLock({ $0 }) else {
            if case .refused(let why) = establish(mayInitialise: location.initialisesOnCheck) { return why }
            return nil
        }
        switch location.placeMark() {
        case .failure(let e): return "store \(storeName): \(e.description)"
        case .success(let mark):
            if let pinned = p.mark, let mark, pinned != mark {
                return "store \(storeName): \(location.placeMoved(pinned: pinned, now: mark))"
            }
        }
        guard readingFile else { return nil }
        // The bytes, not their meaning: this runs for every file released.
        let what = location.identityName
        switch location.readIdentity() {
        case .present(let bytes) where bytes == p.bytes: return nil
        case .present(let bytes):
            if let found = Self.decode(bytes) {
                return "store \(storeName): \(what) now names store id \(found.id)\(found.store == storeName ? "" : " (store \"\(found.store)\")"), but hsmd verified store id \(p.id) there; archive and release are refused\(location.goneHint)"
            }
            return "store \(storeName): \(what) changed since hsmd verified it (store \(p.id)); archive and release are refused"
        case .missing:
            return "store \(storeName): \(what) of store \(p.id) is gone; archive and release are refused\(location.goneHint)"
        case .unreadable(let why):
            return "store \(storeName): \(what) of store \(p.id) cannot be read (\(why)); archive and release are refused"
        }
    }

    /// "tmpfs" or "ramfs" when the store lives on a filesystem that forgets everything at
    /// unmount or reboot: worth a warning (tests and demos use one on purpose).
    public var volatileFilesystem: String? { location.volatileFilesystem }

    /// The id the store proved, if it did.
    public var id: String? { pin.withLock { $0?.id } }

    // MARK: Establishing

    private func establish(mayInitialise: Bool) -> Outcome {
        establishing.withLock { _ in establishLocked(mayInitialise: mayInitialise) }
    }

    private func establishLocked(mayInitialise: Bool) -> Outcome {
        let mark: PlaceMark?
        switch location.placeMark() {
        case .failure(let e): return .refused("store \(storeName): \(e.description)")
        case .success(let m): mark = m
        }
        let place = location.place
        let memory: Remembered?
        do { memory = try rememberedStore() } catch { return .refused("store \(storeName): \(error)") }
        let remembered = memory?.id
        // Where hsmd last used the remembered store, when the config now names another place.
        let there = memory.map { $0.path == place ? "there" : "at \($0.path)" } ?? "there"
        let help = "remove the entry \"\(storeName)\" from \(memoryPath ?? Self.memoryName) and restart hsmd only if the old store is lost for good (files released to it then read EIO)"
        switch location.readIdentity() {
        case .unreadable(let why):
            return .refused("store \(storeName): \(location.identityName) is unreadable (\(why)); archive and release are refused")
        case .present(let bytes):
            guard let content = Self.decode(bytes) else {
                return .refused("store \(storeName): \(location.identityName) is unreadable (not an hsmd store identity); archive and release are refused")
            }
            guard content.store == storeName else {
                return .refused("store \(storeName): \(place) holds store \"\(content.store)\" (id \(content.id)), not \"\(storeName)\"; name the store \"\(content.store)\" in the config or point it at the right \(location.kind)")
            }
            if let remembered, remembered != content.id {
                return .refused("store \(storeName): \(place) holds store id \(content.id), but hsmd archived to store id \(remembered) \(there); \(location.wrongStoreRemedy), or \(help)")
            }
            var outcome = Outcome.verified(id: content.id)
            if let memory, memory.path != place {
                // The same store, moved: remember where it is now.
                do { try remember(content.id) } catch { return .refused("store \(storeName): \(error)") }
            }
            if remembered == nil {
                do { try remember(content.id) } catch { return .refused("store \(storeName): \(error)") }
                outcome = .adopted(id: content.id, why: "its \(location.identityNoun) was not yet remembered in \(memoryPath ?? "state_dir")")
            }
            pin.withLock { $0 = Pin(mark: mark, bytes: bytes, id: content.id) }
            return outcome
        case .missing:
            if let remembered {
                return .refused("store \(storeName): \(place) has no \(location.identityNoun), but hsmd archived to store id \(remembered) \(there): \(location.absentHint)? Archive and release are refused; to start a new store there, \(help)")
            }
            let preIdentity: Bool
            switch location.firstUse() {
            case .refused(let why): return .refused("store \(storeName): \(why)")
            case .empty: preIdentity = false
            case .preIdentity: preIdentity = true
            }
            guard mayInitialise else {
                return .refused("store \(storeName): \(place) has no \(location.identityNoun) yet (hsmd writes one at start); archive and release are refused")
            }
            let content = Content(format: 1, store: storeName, id: ObjectID.random().hex,
                                  created: ISO8601DateFormatter().string(from: Date()))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            guard let json = try? encoder.encode(content) else {
                return .refused("store \(storeName): cannot encode the store identity")
            }
            let written = Array(json) + [0x0A]
            if let why = location.writeIdentity(written) { return .refused("store \(storeName): \(why)") }
            // Read back: what is pinned is what the store holds (another hsmd writing the
            // same store at the same moment leaves one of the two; this one must see which).
            guard case .present(let bytes) = location.readIdentity(), bytes == written else {
                return .refused("store \(storeName): \(location.identityName) just written does not read back as written; archive and release are refused")
            }
            do { try remember(content.id) } catch { return .refused("store \(storeName): \(error)") }
            pin.withLock { $0 = Pin(mark: mark, bytes: bytes, id: content.id) }
            return preIdentity ? .adopted(id: content.id, why: "a store from before identity files") : .initialised(id: content.id)
        }
    }

    static func decode(_ bytes: [UInt8]) -> Content? {
        guard let content = try? JSONDecoder().decode(Content.self, from: Data(bytes)),
              content.format == 1, ObjectID(hex: content.id) != nil else { return nil }
        return content
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
            all[storeName] = Remembered(id: id, path: location.place)
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
}

/// A store that proves its identity (both kinds do).
public protocol IdentifiedStore {
    var identity: StoreIdentity { get }
}

extension PosixStore: IdentifiedStore {}
extension S3Store: IdentifiedStore {}

/// A posix store's identity: `hsmd-store.json` in its directory, and the directory's
/// device and inode (a mount over it, or a remount, changes them).
public struct DirectoryIdentity: IdentityLocation {
    public let root: String

    public init(root: String) { self.root = root }

    var filePath: String { root + "/" + StoreIdentity.fileName }
    public var place: String { root }
    public var kind: String { "directory" }
    public var identityNoun: String { "identity file" }
    public var identityName: String { "the identity file \(filePath)" }
    public var absentHint: String {
        "is the store's filesystem mounted (an empty directory, NFS not mounted, a bind mount over it), or has store.path changed"
    }
    public var wrongStoreRemedy: String { "mount the right store" }
    public var goneHint: String { "" }
    /// Written at start only: a directory that lacks it later is not the one hsmd started with.
    public var initialisesOnCheck: Bool { false }

    public func placeMark() -> Result<PlaceMark?, PlaceProblem> {
        let st: FileStat
        do { st = try FileStat.of(path: root, followLinks: true) } catch { return .failure(PlaceProblem("\(root): \(error)")) }
        guard st.fileType == .directory else { return .failure(PlaceProblem("\(root) is not a directory")) }
        return .success(PlaceMark(device: st.device, inode: st.inode))
    }

    public func placeMoved(pinned: PlaceMark, now: PlaceMark) -> String {
        "\(root) is not the directory whose identity hsmd verified (device \(Self.describe(pinned.device)) inode \(pinned.inode) then, device \(Self.describe(now.device)) inode \(now.inode) now): something is mounted over it, or it was remounted or replaced; archive and release are refused while it is so (if the store was remounted or moved on purpose, restart hsmd to verify it again)"
    }

    public func readIdentity() -> IdentityRead {
        do {
            let fd = try FileDescriptor.open(filePath, [.readOnly, .noFollow])
            defer { fd.close() }
            return .present(try fd.readAll(limit: 64 << 10))
        } catch {
            return error.errno == ENOENT ? .missing : .unreadable("\(error)")
        }
    }

    public func writeIdentity(_ bytes: [UInt8]) -> String? {
        do { try StoreIdentity.writeDurably(bytes, to: filePath, directory: root) } catch { return "\(error)" }
        return nil
    }

    public func firstUse() -> FirstUse {
        let entries: [String]
        do { entries = try Directory.entries(root).filter { $0 != "lost+found" } } catch {
            return .refused("cannot list \(root): \(error)")
        }
        if entries.isEmpty { return .empty }
        if entries == ["objects"] { return .preIdentity }
        return .refused("\(root) is not empty and has no identity file: not an hsmd store (or its identity file was removed); archive and release are refused")
    }

    public var volatileFilesystem: String? {
        (try? Filesystem.typeMagic(of: root)).flatMap { Filesystem.volatileTypes[$0] }
    }

    /// major:minor (FileStat keeps the major in the high 32 bits).
    private static func describe(_ dev: UInt64) -> String { "\(dev >> 32):\(dev & 0xffff_ffff)" }
}
