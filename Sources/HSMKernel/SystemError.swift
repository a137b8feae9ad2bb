import Glibc

/// A failed system call: the errno, what was attempted, and on which path.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let errno: Int32
    public let operation: String
    public let path: String?

    public init(errno: Int32, operation: String, path: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.path = path
    }

    public var description: String {
        let cause = String(cString: strerror(errno))
        if let path { return "\(operation) \(path): \(cause) (errno \(errno))" }
        return "\(operation): \(cause) (errno \(errno))"
    }

    /// Turns a `-errno` return of the C layer into a throw.
    @discardableResult
    static func check<T: SignedInteger>(_ result: T, _ operation: String, _ path: String? = nil) throws(SystemError) -> T {
        if result < 0 { throw SystemError(errno: Int32(-result), operation: operation, path: path) }
        return result
    }
}
