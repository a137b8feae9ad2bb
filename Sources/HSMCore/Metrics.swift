import Synchronization

/// hsmd's metrics: counters, gauges and histograms that cost one relaxed atomic add per
/// event on the hot path (no lock, no allocation), and a writer of Prometheus's text
/// exposition format (version 0.0.4). Hand-written rather than swift-prometheus: that
/// library's histograms take a lock per observation, and hsmd needs nothing else from it
/// (README, "Metrics").
public final class MetricCounter: Sendable {
    private let value = Atomic<UInt64>(0)
    public init() {}
    public func add(_ n: UInt64 = 1) { value.add(n, ordering: .relaxed) }
    public func add(signed n: Int64) { if n > 0 { value.add(UInt64(n), ordering: .relaxed) } }
    public var current: UInt64 { value.load(ordering: .relaxed) }
}

public final class MetricGauge: Sendable {
    private let value = Atomic<Int64>(0)
    public init() {}
    public func set(_ n: Int64) { value.store(n, ordering: .relaxed) }
    public func add(_ n: Int64) { value.add(n, ordering: .relaxed) }
    public var current: Int64 { value.load(ordering: .relaxed) }
}

/// Observations are integers in a base unit (nanoseconds for durations, bytes for sizes);
/// `perUnit` of them make one exposed unit (1e9 nanoseconds: a second). A division, not a
/// multiplication by 1e-9, so that bounds print exactly (60, not 60.00000000000001). Each bucket is its own
/// atomic, counted non-cumulatively and summed at exposition.
public final class MetricHistogram: Sendable {
    /// Upper bounds in base units, ascending.
    public let bounds: [UInt64]
    public let perUnit: Double
    private let buckets: [MetricCounter]
    private let sum = MetricCounter()
    private let count = MetricCounter()

    public init(bounds: [UInt64], perUnit: Double) {
        self.bounds = bounds.sorted()
        self.perUnit = perUnit
        buckets = (0...bounds.count).map { _ in MetricCounter() }
    }

    /// Durations from 100 µs to 60 s, in nanoseconds.
    public static func latency() -> MetricHistogram {
        MetricHistogram(bounds: [100_000, 500_000, 1_000_000, 5_000_000, 10_000_000, 50_000_000, 100_000_000,
                                 500_000_000, 1_000_000_000, 5_000_000_000, 10_000_000_000, 60_000_000_000], perUnit: 1e9)
    }

    public func observe(_ v: UInt64) {
        // Linear over a dozen bounds: cheaper than a binary search at this size.
        var i = 0
        while i < bounds.count && v > bounds[i] { i += 1 }
        buckets[i].add(1)
        sum.add(v)
        count.add(1)
    }

    /// (cumulative counts per bound and +Inf, sum in exposed units, count).
    public var snapshot: (cumulative: [UInt64], sum: Double, count: UInt64) {
        var running: UInt64 = 0
        let cumulative = buckets.map { b -> UInt64 in running &+= b.current; return running }
        // The count read after the buckets could be ahead of them; the +Inf bucket must equal it.
        let total = cumulative.last ?? 0
        return (cumulative, Double(sum.current) / perUnit, total)
    }
}

/// A family of one metric type keyed by label values. Children made up front (fixed label
/// sets such as event kinds) are found without a lock; `child(_:)` for values known only
/// at run time (an errno name, a store) takes one, so use it off the hot path or keep the child.
public final class MetricFamily<Child: Sendable>: Sendable {
    public let name: String
    public let help: String
    public let labelNames: [String]
    private let make: @Sendable () -> Child
    private let children = Mutex<[(labels: [String], child: Child)]>([])

    public init(name: String, help: String, labels: [String], make: @escaping @Sendable () -> Child) {
        self.name = name; self.help = help; self.labelNames = labels; self.make = make
    }

    public func child(_ values: [String]) -> Child {
        children.withLock { list in
            if let c = list.first(where: { $0.labels == values }) { return c.child }
            let c = make()
            list.append((values, c))
            return c
        }
    }

    public func child(_ value: String) -> Child { child([value]) }

    var all: [(labels: [String], child: Child)] { children.withLock { $0 } }
}

/// Writes Prometheus's text exposition format, escaping HELP text and label values as the
/// format requires.
public struct PrometheusWriter {
    public private(set) var text = ""
    public init() {}

    public static func escapeHelp(_ s: String) -> String {
        s.replacingAll("\\", with: "\\\\").replacingAll("\n", with: "\\n")
    }

    public static func escapeLabel(_ s: String) -> String {
        s.replacingAll("\\", with: "\\\\").replacingAll("\"", with: "\\\"").replacingAll("\n", with: "\\n")
    }

    /// Integers print as integers; other values in Go's float syntax (+Inf, NaN).
    public static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }

    public mutating func header(_ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(type)\n"
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
        }
        text += " \(value)\n"
    }

    public mutating func histogram(_ name: String, _ labels: [(String, String)], _ h: MetricHistogram) {
        let s = h.snapshot
        for (i, bound) in h.bounds.enumerated() {
            sample(name + "_bucket", labels + [("le", Self.format(Double(bound) / h.perUnit))], String(s.cumulative[i]))
        }
        sample(name + "_bucket", labels + [("le", "+Inf")], String(s.count))
        sample(name + "_sum", labels, Self.format(s.sum))
        sample(name + "_count", labels, String(s.count))
    }

    public mutating func family(_ f: MetricFamily<MetricCounter>) {
        header(f.name, "counter", f.help)
        for c in f.all { sample(f.name, Array(zip(f.labelNames, c.labels)), String(c.child.current)) }
    }

    public mutating func family(_ f: MetricFamily<MetricGauge>) {
        header(f.name, "gauge", f.help)
        for c in f.all { sample(f.name, Array(zip(f.labelNames, c.labels)), String(c.child.current)) }
    }

    public mutating func family(_ f: MetricFamily<MetricHistogram>) {
        header(f.name, "histogram", f.help)
        for c in f.all { histogram(f.name, Array(zip(f.labelNames, c.labels)), c.child) }
    }

    public mutating func counter(_ name: String, _ help: String, _ c: MetricCounter) {
        header(name, "counter", help)
        sample(name, [], String(c.current))
    }

    public mutating func gauge(_ name: String, _ help: String, _ value: Int64) {
        header(name, "gauge", help)
        sample(name, [], String(value))
    }

    public mutating func gauge(_ name: String, _ help: String, _ value: Double) {
        header(name, "gauge", help)
        sample(name, [], Self.format(value))
    }

    public mutating func histogram(_ name: String, _ help: String, _ h: MetricHistogram) {
        header(name, "histogram", help)
        histogram(name, [], h)
    }
}

extension String {
    fileprivate func replacingAll(_ a: Character, with b: String) -> String {
        guard contains(a) else { return self }
        var out = ""
        for ch in self { if ch == a { out += b } else { out.append(ch) } }
        return out
    }
}
