import Glibc
import HSMKernel

/// What a walk could not read: a directory it could not list, or an entry it could not
/// stat. Everything below `path` went unseen, so a walk with failures is incomplete, and
/// no caller may conclude from it that something is absent (an object unreferenced, a
/// catalog row stale).
struct WalkFailure: Sendable, Equatable {
    let path: String
    let error: SystemError

    /// For a report line.
    var reason: String {
        error.operation == "opendir" || error.operation == "readdir" ? "cannot read directory: \(error)" : "\(error)"
    }
}

/// The one depth-first walk of a managed tree: never follows symlinks, stays on the
/// filesystem (`device`) or, with `subvolumesOf`, also walks directories with another
/// st_dev that are not mount points (btrfs subvolumes, under the same filesystem mark).
/// An entry removed while the walk runs (ENOENT) is simply gone; every other failure is
/// handed to `failed`: there is no silent default.
enum TreeWalker {
    /// Calls `visit` for every entry below `root` (not `root` itself) that is not a
    /// directory, directory by directory in name order; `listed` after each directory
    /// is read (a test hook of gc's walk).
    static func walk(_ root: String, device: UInt64, subvolumesOf mountPoints: Set<String>? = nil,
                     listed: (String) -> Void = { _ in }, failed: (WalkFailure) -> Void,
                     _ visit: (String, FileStat) -> Void) {
        walkWhile(root, device: device, subvolumesOf: mountPoints, listed: listed, failed: failed) { p, st in visit(p, st); return true }
    }

    /// The same walk, ending early once `visit` returns false.
    static func walkWhile(_ root: String, device: UInt64, subvolumesOf mountPoints: Set<String>? = nil,
                          listed: (String) -> Void = { _ in }, failed: (WalkFailure) -> Void,
                          _ visit: (String, FileStat) -> Bool) {
        var stack = [root]
        while let dir = stack.popLast() {
            let names: [String]
            do { names = try Directory.entries(dir).sorted() } catch {
                if error.errno != ENOENT || dir == root { failed(WalkFailure(path: dir, error: error)) }
                continue
            }
            listed(dir)
            var subdirs: [String] = []
            for name in names {
                let p = dir == "/" ? "/" + name : dir + "/" + name
                let st: FileStat
                do { st = try FileStat.of(path: p) } catch {
                    if error.errno != ENOENT { failed(WalkFailure(path: p, error: error)) }
                    continue
                }
                if st.fileType == .directory {
                    if st.device == device || (mountPoints.map { !$0.contains(p) } ?? false) { subdirs.append(p) }
                    continue
                }
                if !visit(p, st) { return }
            }
            stack += subdirs.reversed()
        }
    }
}
