import CHSMKernel
import Glibc

/// Where a permission event's answer goes: the fanotify group, or a recorder in tests.
public protocol EventResponder: Sendable {
    func respondOrFallBack(to eventFD: Int32, _ response: FanotifyResponse) -> Result<FanotifyResponse, SystemError>
}

extension FanotifyGroup: EventResponder {}

/// A permission event taken from the kernel, answered exactly once.
///
/// It owns the fd number the kernel knows the event by: the event fd, or, for an event a
/// dead predecessor read, a placeholder that keeps the number from being handed to a new
/// event until the answer is written (docs/ARCHITECTURE.md, "Restart without harm").
/// Non-copyable, like swift-nio's NIOFileHandle: it cannot be duplicated, and dropping it
/// unanswered denies the access with EIO (never a silent allow) before the fd closes.
public struct PermissionEvent: ~Copyable, Sendable {
    public let number: Int32
    public let pid: Int32
    private let responder: any EventResponder
    private let log: EventLog?
    private let slot: Int32
    private let closesNumber: Bool
    /// What was answered, once it was.
    public private(set) var answer: FanotifyResponse?

    /// Takes ownership of an event fd (or reserved number) of `group`. `closesNumber`:
    /// false for a predecessor's number this process could not reserve because it holds
    /// that fd for something else.
    public init(number: Int32, pid: Int32, group: any EventResponder, log: EventLog?, slot: Int32, closesNumber: Bool = true) {
        self.number = number
        self.pid = pid
        responder = group
        self.log = log
        self.slot = slot
        self.closesNumber = closesNumber
    }

    public var isAnswered: Bool { answer != nil }

    /// Sends `response` unless an answer was sent already (then returns nil). A denial
    /// with an errno the kernel refuses falls back to EIO. Returns what was sent, or the
    /// error of a response the kernel did not take.
    @discardableResult
    public mutating func respond(_ response: FanotifyResponse) -> Result<FanotifyResponse, SystemError>? {
        guard answer == nil else { return nil }
        let sent = responder.respondOrFallBack(to: number, response)
        answer = (try? sent.get()) ?? response
        // The slot is freed only now: until the answer is written a successor must find it.
        if slot >= 0 { log?.done(slot) }
        return sent
    }

    deinit {
        if answer == nil {
            _ = responder.respondOrFallBack(to: number, .deny(errno: EIO))
            if slot >= 0 { log?.done(slot) }
        }
        if closesNumber { Glibc.close(number) }
    }
}
