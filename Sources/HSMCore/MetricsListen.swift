/// The metrics_listen value: "HOST:PORT" with an IPv4 address, "[IPv6]:PORT", or
/// "localhost:PORT". A name other than localhost is refused: hsmd resolves no names for
/// its listener.
public enum MetricsListen {
    public static func split(_ s: String) -> (host: String, port: UInt16)? {
        let host: Substring, portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else { return nil }
            host = s[s.index(after: s.startIndex)..<close]
            portText = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":"), !s[..<colon].contains(":") else { return nil }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText), port > 0 else { return nil }
        return (host == "localhost" ? "127.0.0.1" : String(host), port)
    }

    public static func problem(_ s: String) -> String? {
        guard let (host, _) = split(s) else {
            return "\"\(s)\" is not HOST:PORT (such as \"127.0.0.1:9464\" or \"[::1]:9464\"; port 1 to 65535)"
        }
        let isV4 = host.split(separator: ".", omittingEmptySubsequences: false).count == 4
            && host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { UInt8($0) != nil }
        let isV6 = host.contains(":") && host.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
        guard isV4 || isV6 else { return "\"\(host)\" is not an IP address (give one, or localhost; no names are resolved)" }
        return nil
    }
}
