import CHSMTLS
import HSMKernel
import Glibc

/// A connection a client reads and writes bytes on: plain TCP or TLS over it.
public protocol ByteStream: AnyObject {
    /// "host:port", for errors.
    var peer: String { get }
    /// Writes all of `bytes`.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError)
    /// Reads at most `buffer.count` bytes; 0 at end of stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int
    func close()
}

extension ByteStream {
    public func write(_ bytes: [UInt8]) throws(SystemError) {
        let failure: SystemError? = bytes.withUnsafeBytes { b in
            do throws(SystemError) { try write(b); return nil } catch { return error }
        }
        if let failure { throw failure }
    }
}

extension TCPSocket: ByteStream {}

/// Why a TLS context or session could not be made. `refused`: the server's certificate
/// failed verification, or its TLS cannot be spoken with (the same at every try);
/// otherwise `errno` says how the connection broke.
public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
    public let reason: String
    public let errno: Int32
    public let refused: Bool
    public let peer: String
    public var description: String { peer.isEmpty ? reason : "\(peer): \(reason)" }
}

/// How an https client verifies servers: the system's CA bundle, or one CA file in its
/// place. Made once per store.
public final class TLSContext: Sendable {
    // Sendable: the context is configured in init and only read afterwards; OpenSSL's
    // SSL_CTX may be shared by sessions on many threads once configured.
    nonisolated(unsafe) private let ctx: OpaquePointer

    public init(caFile: String?) throws(TLSError) {
        var err = [CChar](repeating: 0, count: 512)
        let made = err.withUnsafeMutableBufferPointer { e in chsm_tls_ctx_new(caFile, e.baseAddress, e.count) }
        guard let made else {
            let why = err.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? "" }
            throw TLSError(reason: caFile.map { "\(why) (tls_ca_file \($0))" } ?? why, errno: EINVAL, refused: true, peer: "")
        }
        ctx = made
    }

    deinit { chsm_tls_ctx_free(ctx) }

    /// TLS over `socket` (which it takes over, also on failure): the handshake, with the
    /// certificate checked against `host`.
    public func connect(_ socket: TCPSocket, host: String) throws(TLSError) -> TLSSocket {
        let peer = socket.peer
        guard let fd = socket.release() else { throw TLSError(reason: "socket already closed", errno: EBADF, refused: false, peer: peer) }
        var err = [CChar](repeating: 0, count: 512)
        var errnoOut: Int32 = 0
        var refused: Int32 = 0
        let session = err.withUnsafeMutableBufferPointer { e in
            chsm_tls_connect(ctx, fd, host, e.baseAddress, e.count, &errnoOut, &refused)
        }
        guard let session else {
            Glibc.close(fd)
            let why = err.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? "" }
            throw TLSError(reason: why, errno: errnoOut == 0 ? EPROTO : errnoOut, refused: refused != 0, peer: peer)
        }
        return TLSSocket(session: session, peer: peer)
    }
}

/// A TLS session on a connected socket; blocking I/O bounded by the socket's timeouts.
public final class TLSSocket: ByteStream {
    private var session: OpaquePointer?
    public let peer: String

    init(session: OpaquePointer, peer: String) {
        self.session = session
        self.peer = peer
    }

    deinit { close() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        guard let session else { throw SystemError(errno: EBADF, operation: "TLS send", path: peer) }
        guard bytes.count > 0, let base = bytes.baseAddress else { return }
        let rc = chsm_tls_write(session, base, bytes.count)
        if rc < 0 { throw SystemError(errno: -rc, operation: "TLS send", path: peer) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        guard let session else { throw SystemError(errno: EBADF, operation: "TLS receive", path: peer) }
        guard buffer.count > 0, let base = buffer.baseAddress else { return 0 }
        let n = chsm_tls_read(session, base, buffer.count)
        if n < 0 { throw SystemError(errno: Int32(-n), operation: "TLS receive", path: peer) }
        return n
    }

    public func close() {
        if let session { chsm_tls_close(session) }
        session = nil
    }
}
