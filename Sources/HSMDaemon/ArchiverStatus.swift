import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

// Archiver: the status of single files.
extension Archiver {
    func statusOf(_ path: String, _ st: FileStat, _ marker: Marker?, _ fs: ManagedFilesystem) -> FileStatus {
        FileStatus.derive(stat: st, marker: marker, objectExists: { fs.store.contains($0) })
    }

    /// One row per regular file, to `row` as each is read (directories are walked, so a
    /// tree's rows are never all held at once); what cannot be read goes to `problem`.
    func status(_ path: String, row: (StatusRow) -> Void, problem: (FileResult) -> Void) {
        let lst: FileStat
        do { lst = try FileStat.of(path: path) } catch {
            problem(FileResult(path: path, outcome: .failed, reason: error.errno == ENOENT ? "no such file or directory" : "\(error)"))
            return
        }
        if lst.fileType == .directory {
            TreeWalker.walk(path, device: lst.device, failed: {
                problem(FileResult(path: $0.path, outcome: .failed, reason: $0.reason))
            }) { p, st in
                if st.fileType == .regular { status(p, row: row, problem: { _ in }) }
            }
            if filesystems.filesystem(device: lst.device) == nil {
                problem(FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))"))
            }
            return
        }
        let (rows, problems) = fileStatus(path, lst)
        rows.forEach(row)
        problems.forEach(problem)
    }

    /// The row of one file that is not a directory (or why there is none).
    private func fileStatus(_ path: String, _ lst: FileStat) -> (rows: [StatusRow], problems: [FileResult]) {
        guard lst.fileType == .regular else {
            return ([], [FileResult(path: path, outcome: .skipped, reason: "\(lst.fileType.rawValue): not a regular file")])
        }
        guard let fs = filesystems.filesystem(device: lst.device) else {
            return ([], [FileResult(path: path, outcome: .failed, reason: "not on a managed filesystem (managed: \(filesystems.pathsDescription))")])
        }
        // Under the inode lock: a recall lets its reader go before its marker is durable
        // (the data is synced first), and status must not show the state from before.
        let read = locks.withLock(lst.inodeKey) { () -> Result<(FileStat, [UInt8]?, Bool), SystemError> in
            do throws(SystemError) {
                return .success((try FileStat.of(path: path), try Xattr.get(path: path, Marker.xattrName), try Xattr.get(path: path, Pin.xattrName) != nil))
            } catch {
                return .failure(error)
            }
        }
        guard case .success(let (st, raw, pinned)) = read else {
            if case .failure(let error) = read { return ([], [FileResult(path: path, outcome: .failed, reason: "\(error)")]) }
            return ([], [])
        }
        let s = FileStatus.derive(stat: st, markerBytes: raw, objectExists: { fs.store.contains($0) })
        return ([StatusRow(path: path, state: s.state, size: st.size, offlineBytes: s.offlineBytes, object: s.object?.hex, detail: s.detail, pinned: pinned)], [])
    }
}
