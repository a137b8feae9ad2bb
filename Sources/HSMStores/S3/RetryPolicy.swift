/// When a failed S3 request is sent again, and after how long: throttling (429, 503
/// SlowDown), server failures (5xx, RequestTimeout) and broken connections (reset,
/// refused, timed out) are tried again with jittered exponential backoff until the
/// request's time budget (the recall's `recall_timeout`) would be passed; anything else
/// (403, 404, a certificate refused, a malformed answer) fails at once.
public struct RetryPolicy: Sendable, Equatable {
    /// The first wait; each later one doubles, up to `maxBackoffMillis`.
    public var firstBackoffMillis: Int
    public var maxBackoffMillis: Int
    /// How long all attempts of one request may take, from the first one's start.
    public var budgetMillis: Int

    public init(budgetMillis: Int, firstBackoffMillis: Int = 100, maxBackoffMillis: Int = 5000) {
        self.budgetMillis = max(0, budgetMillis)
        self.firstBackoffMillis = max(1, firstBackoffMillis)
        self.maxBackoffMillis = max(self.firstBackoffMillis, maxBackoffMillis)
    }

    public enum Verdict: Equatable, Sendable {
        case retry(afterMillis: Int)
        case fail
    }

    /// The wait before attempt `attempts + 1`: half of the doubled backoff fixed, half
    /// random ("equal jitter"), so clients that failed together do not come back together
    /// and none waits less than half the backoff. `jitter` is uniform in [0, 1).
    public func backoffMillis(afterAttempts attempts: Int, jitter: Double) -> Int {
        let doubled = firstBackoffMillis << min(max(attempts - 1, 0), 24)
        let cap = min(maxBackoffMillis, doubled)
        let j = jitter.isFinite ? min(max(jitter, 0), 1) : 0
        return max(1, cap / 2 + Int(Double(cap - cap / 2) * j))
    }

    /// What to do after `attempts` attempts, the last of which failed with `error`,
    /// `elapsedMillis` after the first began.
    public func next(after error: S3Error, attempts: Int, elapsedMillis: Int, jitter: Double) -> Verdict {
        guard error.retryable else { return .fail }
        let wait = backoffMillis(afterAttempts: attempts, jitter: jitter)
        // No attempt that could only start after the budget is spent.
        guard elapsedMillis + wait < budgetMillis else { return .fail }
        return .retry(afterMillis: wait)
    }
}
