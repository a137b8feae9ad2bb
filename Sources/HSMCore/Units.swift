import Foundation

/// Parsing of the human-sized values hsmctl and the config accept.
public enum Units {
    /// Longest duration accepted: 100 years.
    public static let maxDuration: Int64 = 100 * 366 * 86400

    /// "90" (seconds), "45s", "30m", "12h", "30d", "2w"; at most `maxDuration`.
    public static func parseDuration(_ text: String) -> Int64? {
        guard let d = parseDurationUnbounded(text), d <= maxDuration else { return nil }
        return d
    }

    private static func parseDurationUnbounded(_ text: String) -> Int64? {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        guard let last = t.last else { return nil }
        let table: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800]
        if let mult = table[last] {
            guard let n = Int64(t.dropLast()), n >= 0 else { return nil }
            return n.multipliedReportingOverflow(by: mult).overflow ? nil : n * mult
        }
        guard let n = Int64(t), n >= 0 else { return nil }
        return n
    }

    /// "4096", "64k", "64KiB", "1M", "2G", "1T" (binary multiples).
    public static func parseSize(_ text: String) -> Int64? {
        var t = text.trimmingCharacters(in: .whitespaces).lowercased()
        if t.hasSuffix("ib") { t.removeLast(2) } else if t.hasSuffix("b") { t.removeLast() }
        guard let last = t.last else { return nil }
        let table: [Character: Int64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40]
        if let mult = table[last] {
            guard let n = Int64(t.dropLast()), n >= 0 else { return nil }
            return n.multipliedReportingOverflow(by: mult).overflow ? nil : n * mult
        }
        guard let n = Int64(t), n >= 0 else { return nil }
        return n
    }

    /// 2592000 → "30d", 5400 → "90m"; the largest unit that divides exactly.
    public static func formatDuration(_ seconds: Int64) -> String {
        for (unit, n) in [("w", Int64(604800)), ("d", 86400), ("h", 3600), ("m", 60)] where seconds >= n && seconds % n == 0 {
            return "\(seconds / n)\(unit)"
        }
        return "\(seconds)s"
    }

    /// 1536 → "1.5 KiB".
    public static func formatBytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while abs(v) >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if i == 0 { return "\(n) B" }
        let scaled = (v * 10).rounded() / 10
        return "\(scaled) \(units[i])"
    }
}

