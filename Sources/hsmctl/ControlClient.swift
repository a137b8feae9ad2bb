import Foundation
import Glibc
import HSMCore
import HSMKernel

/// hsmctl's side of the control socket.
struct ControlClient {
    let socket: String

    static let defaultSocket = "/run/hsmd/hsmd.sock"

    static func resolveSocket(_ option: String?) -> String {
        option ?? ProcessInfo.processInfo.environment["HSMD_SOCKET"] ?? defaultSocket
    }

    /// Sends one request; calls `onProgress` for progress lines; returns the result.
    /// With `onFiles`, every part of the file list goes there as it arrives (the result
    /// then has no files) instead of being collected.
    func send(_ request: ControlRequest, onFiles: (([FileResult]) -> Void)? = nil,
              onProgress: (ProgressReport) -> Void = { _ in }) throws(CLIError) -> ControlReply {
        let conn: LineChannel
        do { conn = try LineChannel.connect(socket) } catch {
            switch error.errno {
            case ENOENT, ECONNREFUSED:
                throw .unreachable("hsmd is not running (nothing listens on \(socket)); start it (systemctl start hsmd) or point --socket / HSMD_SOCKET at its socket")
            case EACCES, EPERM:
                throw .unreachable("permission denied on \(socket): hsmd's control socket is root-only; run hsmctl as root")
            default:
                throw .unreachable("cannot reach hsmd at \(socket): \(error)")
            }
        }
        defer { conn.close() }
        let line = ControlCodec.encode(request)
        guard line.count <= ControlRequestLimits.maxLineBytes else {
            throw .refused("the request is \(line.count >> 20) MiB, more than hsmd reads in one (\(ControlRequestLimits.maxLineBytes >> 20) MiB); name fewer or shorter paths")
        }
        do { try conn.writeLine(line) } catch { throw .unreachable("sending to hsmd: \(error)") }
        var earlierFiles: [FileResult] = []
        var earlierStatus: [StatusRow] = []
        while true {
            let line: [UInt8]?
            do { line = try conn.readLine() } catch { throw .unreachable("reading from hsmd: \(error)") }
            guard let line else { throw .unreachable("hsmd closed the connection without an answer (did it stop?)") }
            let reply: ControlReply
            do { reply = try ControlCodec.decode(ControlReply.self, line) } catch {
                throw .unreachable("hsmd sent a malformed reply: \(error)")
            }
            switch reply.type {
            case .progress: if let p = reply.progress { onProgress(p) }
            case .files:
                if let onFiles { onFiles(reply.files ?? []) } else { earlierFiles += reply.files ?? [] }
                earlierStatus += reply.status ?? []
            case .error: throw .refused(reply.message ?? "hsmd refused the request")
            case .result:
                var r = reply
                if !earlierStatus.isEmpty { r.status = earlierStatus + (reply.status ?? []) }
                if let onFiles {
                    if let files = r.files { onFiles(files) }
                    r.files = nil
                    return r
                }
                if !earlierFiles.isEmpty { r.files = earlierFiles + (reply.files ?? []) }
                return r
            }
        }
    }
}

enum CLIError: Error {
    /// hsmd could not be reached: exit 2.
    case unreachable(String)
    /// hsmd refused the request as a whole: exit 2.
    case refused(String)
}
