import Glibc
import HSMCore
import HSMKernel

/// Finds, from the stopped process, the file of a pre-access event a killed hsmd read and
/// did not record (UnrecordedEventMatch has the rules). Runs once at start, before the
/// event loop: it opens /proc files and O_PATH fds, none of which raises an event.
enum UnrecordedEventFiles {
    struct Found {
        let handle: InodeHandle
        let key: InodeKey
        /// The name the stopped process has for it (/proc/PID/fd/N), for the log.
        let path: String
    }

    /// For each of `ranges` (events of process `pid`): its file, or why it is not known.
    /// Every fd it opens is closed before it returns, so no number a predecessor's event
    /// carries stays taken.
    static func find(pid: Int32, ranges: [AccessRange?]) -> [Result<Found, Refusal>] {
        guard let threads = ProcessThreads.waitingThreads(pid: pid, limit: 4096) else {
            return ranges.map { _ in .failure(Refusal("the threads of pid \(pid) cannot be listed (it is gone, or has more than 4096)")) }
        }
        var opened: [FileDescriptor?] = []
        defer { for fd in opened { fd?.close() } }
        var accesses: [StoppedAccess] = []
        for t in threads where t.waitsOnFanotify {
            let (access, fd) = resolve(UnrecordedEventMatch.request(of: ThreadState(line: t.syscallLine)), pid: pid)
            accesses.append(access)
            opened.append(fd)
        }
        return ranges.map { range in
            switch UnrecordedEventMatch.match(range: range, threads: accesses) {
            case .unidentified(let why):
                return .failure(Refusal(why))
            case .file(let key, let thread):
                guard let fd = opened[thread] else { return .failure(Refusal("the file was not opened")) }
                do {
                    return .success(Found(handle: try InodeHandle.of(fd: fd.rawValue, path: fd.path), key: key,
                                          path: FileDescriptor.currentPath(of: fd.rawValue)))
                } catch {
                    return .failure(Refusal("\(error)"))
                }
            }
        }
    }

    struct Refusal: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// What a thread's request comes to: the file behind its fd (a regular file only) and
    /// where the access starts.
    private static func resolve(_ request: UnrecordedEventMatch.Request, pid: Int32) -> (StoppedAccess, FileDescriptor?) {
        switch request {
        case .opening: return (.opening, nil)
        case .unknown: return (.unknown, nil)
        case .file(let n, let start, let count):
            guard let file = try? ProcessThreads.openFile(pid: pid, fd: n) else { return (.unknown, nil) }
            guard let st = try? file.stat(), st.fileType == .regular,
                  let from = start ?? ProcessThreads.filePosition(pid: pid, fd: n).map({ UInt64($0) }) else {
                file.close()
                return (.unknown, nil)
            }
            return (.range(file: st.inodeKey, start: from, count: count), file)
        }
    }
}
