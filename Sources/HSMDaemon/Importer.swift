import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores

/// `hsmctl import STORE`: disaster recovery from a store's records alone. Every archived
/// file comes back as a released stub (size, mode, owner, times, its own xattrs and a
/// marker naming its object) at its archived path, or under `into`, so reads recall as
/// usual. A stub is made unnamed (O_TMPFILE) and linked under its name only when complete:
/// no one sees a half-made file, and an existing name is never replaced.
///
/// Record paths are untrusted: a `.` or `..` component is refused, every directory is
/// opened without following symlinks, and each must be on the target filesystem.
struct Importer {
    let archiver: Archiver

    struct Outcome {
        var files: [FileResult] = []
        var notes: [String] = []
    }

    struct Refused: Error, CustomStringConvertible {
        let description: String
    }

    /// Where the stubs go: a directory on a managed filesystem, and how a record's path
    /// maps below it.
    private struct Target {
        let fs: ManagedFilesystem
        /// nil: each record's own path (on a managed filesystem of the store).
        let into: String?
    }

    func run(storeName: String, into: String?, dryRun: Bool) -> Result<Outcome, Refused> {
        let filesystems = archiver.filesystems
        guard let store = filesystems.stores.first(where: { $0.name == storeName }) else {
            let names = filesystems.stores.map(\.name).joined(separator: ", ")
            return .failure(Refused(description: "no store named \(storeName) in hsmd's config (stores: \(names))"))
        }
        if let problem = store.healthProblem() { return .failure(Refused(description: "\(problem); nothing imported")) }
        var target: Target?
        if let into {
            let st: FileStat
            do { st = try FileStat.of(path: into, followLinks: true) } catch {
                return .failure(Refused(description: "--into \(into): \(error)"))
            }
            guard st.fileType == .directory else { return .failure(Refused(description: "--into \(into): not a directory")) }
            guard let fs = filesystems.filesystem(device: st.device) else {
                return .failure(Refused(description: "--into \(into): not on a managed filesystem (managed: \(filesystems.pathsDescription))"))
            }
            guard fs.store.name == storeName else {
                return .failure(Refused(description: "--into \(into): its filesystem \(fs.path) archives to store \(fs.store.name), not \(storeName): its stubs could not recall"))
            }
            target = Target(fs: fs, into: into)
        }
        guard filesystems.all.contains(where: { $0.store.name == storeName }) || target != nil else {
            return .failure(Refused(description: "no managed filesystem archives to store \(storeName)"))
        }
        let ids: [ObjectID]
        do { ids = try store.list() } catch { return .failure(Refused(description: "store \(storeName): cannot list its objects: \(error); nothing imported")) }

        var out = Outcome()
        // Objects some marker already names (a file still there, or imported before) get
        // no second stub: two markers on one object would break at the first remove.
        var scan = MarkerScan()
        scan.gated = false
        for fs in filesystems.all { scan.walk(fs.path, device: fs.device) }
        if !scan.failures.isEmpty {
            out.notes.append("the walk for existing markers was incomplete (\(scan.failures.count) problem(s), the first: \(scan.failures[0].path): \(scan.failures[0].reason ?? "")); a file it missed may get a second stub")
        }
        let busy = Set(archiver.inProgress.pending().compactMap { $0.entry.flatMap { ObjectID(hex: $0.object) } })

        // Every version of every path; the newest archive wins.
        var versions: [String: [ObjectRecord]] = [:]
        for id in ids.sorted(by: { $0.hex < $1.hex }) {
            if busy.contains(id) {
                out.files.append(imported(FileResult(path: "object \(id)", outcome: .skipped, reason: "an archive of it is in progress", object: id.hex)))
                continue
            }
            let record: ObjectRecord
            do { record = try store.storedRecord(id) } catch {
                out.files.append(imported(FileResult(path: "object \(id)", outcome: .failed, reason: "its record cannot be read: \(error)", object: id.hex)))
                continue
            }
            guard store.contains(id) else {
                out.files.append(imported(FileResult(path: record.path, outcome: .failed, reason: "object \(id) has a record but no data in store \(storeName)", object: id.hex)))
                continue
            }
            switch destination(of: record.path, storeName: storeName, target: target) {
            case .failure(let why):
                out.files.append(imported(FileResult(path: record.path, outcome: .failed, reason: why.description, object: id.hex)))
            case .success(let (fs, base, components)):
                let key = fs.path + "\u{0}" + base + "\u{0}" + components.joined(separator: "/")
                versions[key, default: []].append(record)
            }
        }

        var touched: [String: ManagedFilesystem] = [:]
        var created = 0
        for key in versions.keys.sorted() {
            guard let records = versions[key] else { continue }
            let sorted = records.sorted { a, b in
                (a.archivedAt, a.mtimeNs, a.object.hex) > (b.archivedAt, b.mtimeNs, b.object.hex)
            }
            let newest = sorted[0]
            guard case .success(let (fs, base, components)) = destination(of: newest.path, storeName: storeName, target: target) else { continue }
            let shown = (base == "/" ? "" : base) + "/" + components.joined(separator: "/")
            for older in sorted.dropFirst() {
                out.files.append(imported(FileResult(path: shown, outcome: .skipped,
                                                     reason: "an older version (archived \(Self.date(older.archivedAt))); object \(newest.object) is newer and wins; kept in the store",
                                                     object: older.object.hex)))
            }
            if let at = scan.named[newest.object] {
                out.files.append(imported(FileResult(path: shown, outcome: .skipped, reason: "object \(newest.object) is already named by the marker of \(at)", object: newest.object.hex)))
                continue
            }
            let r = makeStub(newest, fs: fs, base: base, components: components, shown: shown, dryRun: dryRun)
            if r.outcome == .done { created += 1; touched[fs.path] = fs }
            out.files.append(imported(r, record: newest, store: storeName))
        }
        if !dryRun {
            // One flush for all the stubs, rather than an fsync each.
            for fs in touched.values {
                do {
                    let root = try FileDescriptor.open(fs.path, [.directory])
                    defer { root.close() }
                    try root.syncFilesystem()
                } catch {
                    out.files.append(FileResult(path: fs.path, outcome: .failed, reason: "the stubs are made but could not be flushed to disk: \(error)"))
                }
            }
        }
        out.notes.append("store \(storeName): \(ids.count) object(s), \(versions.count) path(s); \(dryRun ? "would create" : "created") \(created) stub(s)")
        archiver.log.notice("import from store \(storeName)\(dryRun ? " (dry run)" : ""): \(created) stub(s) \(dryRun ? "would be " : "")created from \(ids.count) object(s)")
        return .success(out)
    }

    /// Every object import decides about passes here once (the catalog records it here):
    /// `record` and `store` are given for each stub made (outcome done, not a dry run:
    /// `r.state` is then the new file's, `r.path` its path).
    private func imported(_ r: FileResult, record: ObjectRecord? = nil, store: String? = nil) -> FileResult { r }

    /// Where a record's path goes: the filesystem, the directory its components are
    /// below, and the components (checked: no empty, `.` or `..` one).
    private func destination(of path: String, storeName: String, target: Target?) -> Result<(ManagedFilesystem, String, [String]), Refused> {
        let components = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        if let bad = components.first(where: { $0 == "." || $0 == ".." }) {
            return .failure(Refused(description: "refused: the archived path has a \"\(bad)\" component (an unsafe record)"))
        }
        guard !components.isEmpty else { return .failure(Refused(description: "refused: the archived path names no file")) }
        func relative(to root: String) -> [String]? {
            let rootParts = root.split(separator: "/").map(String.init)
            guard components.count > rootParts.count, Array(components.prefix(rootParts.count)) == rootParts else { return nil }
            return Array(components.dropFirst(rootParts.count))
        }
        let all = archiver.filesystems.all
        if let target, let into = target.into {
            // Relative to the managed filesystem it was archived from, when that is known.
            let from = all.compactMap { fs in relative(to: fs.path).map { (fs.path.count, $0) } }.max { $0.0 < $1.0 }
            return .success((target.fs, into, from?.1 ?? components))
        }
        let own = all.filter { $0.store.name == storeName }.compactMap { fs in relative(to: fs.path).map { (fs, $0) } }
        guard let best = own.max(by: { $0.0.path.count < $1.0.path.count }) else {
            let paths = all.filter { $0.store.name == storeName }.map(\.path).joined(separator: ", ")
            return .failure(Refused(description: "refused: archived outside every managed filesystem that uses store \(storeName) (\(paths)); import it with --into DIR"))
        }
        return .success((best.0, best.0.path, best.1))
    }

    /// Makes (or, in a dry run, checks) the stub of `record` at base/components.
    private func makeStub(_ record: ObjectRecord, fs: ManagedFilesystem, base: String, components: [String], shown: String, dryRun: Bool) -> FileResult {
        func fail(_ why: String) -> FileResult { FileResult(path: shown, outcome: .failed, reason: why, object: record.object.hex) }
        let state: HSMState = record.checksums.contains { $0 != nil } ? .released : .archived
        var dir: FileDescriptor
        do { dir = try FileDescriptor.open(base, [.directory]) } catch { return fail("\(error)") }
        defer { dir.close() }
        do {
            guard try dir.stat().device == fs.device else {
                return fail("\(base) is not on the managed filesystem \(fs.path) hsmd started with (mounted anew since? restart hsmd)")
            }
        } catch { return fail("\(error)") }
        // A directory missing in a dry run: the file cannot exist either.
        var missing = false
        walk: for name in components.dropLast() {
            let next: FileDescriptor
            switch Self.openOrMake(dir, name, create: !dryRun) {
            case .opened(let fd): next = fd
            case .missing: missing = true; break walk
            case .failed(let why): return fail(why)
            }
            dir.close()
            dir = next
            do {
                guard try dir.stat().device == fs.device else { return fail("refused: \(dir.path) is on another filesystem than \(fs.path)") }
            } catch { return fail("\(error)") }
        }
        let name = components[components.count - 1]
        if !missing {
            do {
                if try dir.hasEntry(name) { return fail("conflict: \(shown) exists; never overwritten (move it away and import again, or use --into)") }
            } catch { return fail("\(error)") }
        }
        if dryRun {
            return FileResult(path: shown, outcome: .done, reason: "would create a \(state.rawValue) stub (\(Units.formatBytes(record.size)))", state: state, object: record.object.hex)
        }
        do {
            let file = try dir.makeUnnamedFile(mode: 0o600)
            defer { file.close() }
            try file.truncate(to: record.size)
            // Owner before mode (chown clears set-id bits) and before the xattrs (it clears
            // security.capability); times last, as everything before changes them.
            try file.setOwner(uid: record.uid, gid: record.gid)
            try file.setMode(record.mode & 0o7777)
            for (xname, value) in record.xattrs.sorted(by: { $0.key < $1.key }) where !Pin.isHSMState(xname) {
                guard let bytes = Data(base64Encoded: value) else { return fail("its record's xattr \(xname) is not base64") }
                try file.setXattr(xname, [UInt8](bytes))
            }
            var marker = Marker(object: record.object, size: record.size, mtimeNs: record.mtimeNs, blockShift: record.blockShift)
            for (b, sum) in record.checksums.enumerated() where sum != nil { marker.offline[b] = true }
            marker.releasedBlocks = UInt32(marker.offline.setCount)
            try file.setXattr(Marker.xattrName, MarkerCodec.encode(marker))
            try file.setTimes(accessNs: record.atimeNs, modificationNs: record.mtimeNs)
            do { try dir.link(file, as: name) } catch {
                if error.errno == EEXIST { return fail("conflict: \(shown) exists; never overwritten (move it away and import again, or use --into)") }
                throw error
            }
            if let catalog = archiver.catalog {
                catalog.enqueue(.object(CatalogObject(id: record.object.hex, store: fs.store.name, handle: (try? InodeHandle.of(fd: file.rawValue, path: shown))?.encoded,
                                                      fs: fs.path, path: record.path, size: record.size,
                                                      storedBytes: record.storedBytes, archivedAt: record.archivedAt)))
                catalog.noteFile(file, fs: fs, marker: marker, path: shown)
            }
        } catch {
            return fail("\(error); nothing created")
        }
        return FileResult(path: shown, outcome: .done, reason: "created from object \(record.object)", state: state, object: record.object.hex)
    }

    private enum Opened {
        case opened(FileDescriptor)
        case missing
        case failed(String)
    }

    /// The subdirectory `name` of `dir`, made (0755, root's) when missing and `create`.
    private static func openOrMake(_ dir: FileDescriptor, _ name: String, create: Bool) -> Opened {
        do { return .opened(try dir.openDirectory(name)) } catch {
            switch error.errno {
            case ENOENT:
                guard create else { return .missing }
                do {
                    let made = try dir.makeDirectory(name, mode: 0o755)
                    let sub = try dir.openDirectory(name)
                    // hsmd's umask would leave it 0700, shutting its files' owners out.
                    if made {
                        do { try sub.setMode(0o755) } catch {
                            sub.close()
                            return .failed("\(error)")
                        }
                    }
                    return .opened(sub)
                } catch let e {
                    if [ENOTDIR, ELOOP].contains(e.errno) { return .failed("refused: \(dir.path)/\(name) is not a directory (a file or a symlink is in the way)") }
                    return .failed("\(e)")
                }
            case ENOTDIR, ELOOP:
                return .failed("refused: \(dir.path)/\(name) is not a directory (a file or a symlink is in the way)")
            default:
                return .failed("\(error)")
            }
        }
    }

    static func date(_ seconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}
