import Logging
import Synchronization

/// hsmd's log level, changeable while it runs (a config reload). Every logger's handler
/// reads it here, so a change reaches loggers made earlier too.
public final class LogLevelSwitch: Sendable {
    private let raw: Atomic<Int>
    /// Set from --log-level: the command line wins over log_level at a reload as at start.
    public let pinnedByCommandLine: Bool
    private static let levels = Logger.Level.allCases

    public init(_ level: Logger.Level, pinnedByCommandLine: Bool = false) {
        raw = Atomic(Self.levels.firstIndex(of: level) ?? 2)
        self.pinnedByCommandLine = pinnedByCommandLine
    }

    public var level: Logger.Level {
        get { let i = raw.load(ordering: .relaxed); return Self.levels.indices.contains(i) ? Self.levels[i] : .info }
        set { raw.store(Self.levels.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }

    /// A handler writing to standard error at the switch's level.
    public func handler(label: String) -> SwitchedLogHandler {
        var inner = StreamLogHandler.standardError(label: label)
        // The switch filters (Logger asks logLevel); the stream writes whatever reaches it.
        inner.logLevel = .trace
        return SwitchedLogHandler(inner: inner, level: self)
    }
}

public struct SwitchedLogHandler: LogHandler {
    var inner: StreamLogHandler
    let level: LogLevelSwitch

    public var logLevel: Logger.Level {
        get { level.level }
        // A logger that sets its own level would change everyone's: leave that to reload.
        set {}
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        inner.log(event: event)
    }
}
