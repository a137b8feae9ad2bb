import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging

// Archiver: hsmctl recall of one file.
extension Archiver {
    func recall(_ path: String, range: Range<Int64>?) -> FileResult {
        do {
            let (fd, st, fs) = try openManaged(path, [.readWrite])
            defer { fd.close() }
            return try locks.withLock(st.inodeKey) { () throws(Refusal) -> FileResult in
                let bytes: Int64
                let ticket = engine.inFlight.begin(path: { [path = fd.path] in path }, pid: 0, kind: "hsmctl")
                defer { engine.inFlight.end(ticket) }
                do { bytes = try engine.recall(fd, range: range.map { AccessRange(offset: $0.lowerBound, count: max($0.upperBound - $0.lowerBound, 1)) } ?? .wholeFile,
                                             key: st.inodeKey, store: fs.store, readahead: false, ticket: ticket)
                } catch {
                    log.error("recall of \(fd.path) failed: \(error)")
                    throw Refusal(result: FileResult(path: fd.path, outcome: .failed, reason: "\(error)", state: .damaged))
                }
                let now = (try? fd.stat()) ?? st
                let status = statusOf(fd.path, now, try readMarker(fd), fs)
                return FileResult(path: fd.path, outcome: .done, state: status.state, object: status.object?.hex, bytesRecalled: bytes)
            }
        } catch let r as Refusal {
            return r.result
        } catch {
            return FileResult(path: path, outcome: .failed, reason: "\(error)")
        }
    }
}
