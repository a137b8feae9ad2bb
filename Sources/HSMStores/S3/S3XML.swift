/// Just enough XML for S3's responses: elements, text, the five predefined entities and
/// numeric character references; declarations, comments and processing instructions are
/// skipped. Anything else malformed is nil, never a trap: the bytes come from the network.
struct XMLNode: Sendable, Equatable {
    var name: String
    var text: String = ""
    var children: [XMLNode] = []

    func child(_ name: String) -> XMLNode? { children.first { $0.name == name } }
    func all(_ name: String) -> [XMLNode] { children.filter { $0.name == name } }
    func value(_ name: String) -> String? { child(name)?.text }

    static let maxDepth = 32

    /// The root element, or nil when `bytes` is not well-formed enough to trust.
    static func parse(_ bytes: [UInt8]) -> XMLNode? {
        var stack: [XMLNode] = []
        var root: XMLNode?
        var i = 0
        let n = bytes.count
        func find(_ pattern: [UInt8], from start: Int) -> Int? {
            guard !pattern.isEmpty, start <= n - pattern.count else { return nil }
            var j = start
            while j <= n - pattern.count {
                if bytes[j] == pattern[0] && Array(bytes[j..<(j + pattern.count)]) == pattern { return j }
                j += 1
            }
            return nil
        }
        while i < n {
            if bytes[i] != UInt8(ascii: "<") {
                let end = bytes[i...].firstIndex(of: UInt8(ascii: "<")) ?? n
                let raw = bytes[i..<end]
                if stack.isEmpty {
                    // Only whitespace may stand outside the root.
                    guard raw.allSatisfy({ [0x20, 0x09, 0x0a, 0x0d].contains($0) }) else { return nil }
                } else {
                    guard let text = decodeEntities(raw) else { return nil }
                    stack[stack.count - 1].text += text
                }
                i = end
                continue
            }
            // Markup.
            if bytes[i...].starts(with: Array("<?".utf8)) {
                guard let e = find(Array("?>".utf8), from: i + 2) else { return nil }
                i = e + 2
            } else if bytes[i...].starts(with: Array("<!--".utf8)) {
                guard let e = find(Array("-->".utf8), from: i + 4) else { return nil }
                i = e + 3
            } else if bytes[i...].starts(with: Array("<![CDATA[".utf8)) {
                guard !stack.isEmpty, let e = find(Array("]]>".utf8), from: i + 9) else { return nil }
                stack[stack.count - 1].text += String(decoding: bytes[(i + 9)..<e], as: UTF8.self)
                i = e + 3
            } else if bytes[i...].starts(with: Array("<!".utf8)) {
                guard let e = bytes[i...].firstIndex(of: UInt8(ascii: ">")) else { return nil }
                i = e + 1
            } else {
                guard let e = bytes[i...].firstIndex(of: UInt8(ascii: ">")) else { return nil }
                var inner = bytes[(i + 1)..<e]
                i = e + 1
                if inner.first == UInt8(ascii: "/") {
                    let name = String(decoding: inner.dropFirst(), as: UTF8.self).trimmingSpaces()
                    guard var done = stack.popLast(), done.name == name else { return nil }
                    done.text = String(done.text)
                    if stack.isEmpty {
                        guard root == nil else { return nil }
                        root = done
                    } else {
                        stack[stack.count - 1].children.append(done)
                    }
                    continue
                }
                let selfClosing = inner.last == UInt8(ascii: "/")
                if selfClosing { inner = inner.dropLast() }
                // The name ends at the first space; attributes are ignored.
                let nameBytes = inner.prefix { ![0x20, 0x09, 0x0a, 0x0d].contains($0) }
                guard !nameBytes.isEmpty else { return nil }
                let node = XMLNode(name: String(decoding: nameBytes, as: UTF8.self))
                if selfClosing {
                    if stack.isEmpty {
                        guard root == nil else { return nil }
                        root = node
                    } else {
                        stack[stack.count - 1].children.append(node)
                    }
                } else {
                    guard root == nil, stack.count < maxDepth else { return nil }
                    stack.append(node)
                }
            }
        }
        guard stack.isEmpty else { return nil }
        return root
    }

    static func decodeEntities(_ raw: ArraySlice<UInt8>) -> String? {
        guard raw.contains(UInt8(ascii: "&")) else { return String(decoding: raw, as: UTF8.self) }
        var out: [UInt8] = []
        var i = raw.startIndex
        while i < raw.endIndex {
            let b = raw[i]
            guard b == UInt8(ascii: "&") else { out.append(b); i += 1; continue }
            guard let semi = raw[i...].prefix(12).firstIndex(of: UInt8(ascii: ";")) else { return nil }
            let name = String(decoding: raw[(i + 1)..<semi], as: UTF8.self)
            switch name {
            case "amp": out.append(UInt8(ascii: "&"))
            case "lt": out.append(UInt8(ascii: "<"))
            case "gt": out.append(UInt8(ascii: ">"))
            case "quot": out.append(UInt8(ascii: "\""))
            case "apos": out.append(UInt8(ascii: "'"))
            default:
                let value: UInt32?
                if name.hasPrefix("#x") { value = UInt32(name.dropFirst(2), radix: 16) }
                else if name.hasPrefix("#") { value = UInt32(name.dropFirst(), radix: 10) }
                else { value = nil }
                guard let value, let scalar = Unicode.Scalar(value) else { return nil }
                out += Array(String(Character(scalar)).utf8)
            }
            i = semi + 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An S3 error response body: `<Error><Code>…</Code><Message>…</Message></Error>`.
public struct S3ErrorBody: Sendable, Equatable {
    public var code: String
    public var message: String

    public static func parse(_ bytes: [UInt8]) -> S3ErrorBody? {
        guard let root = XMLNode.parse(bytes), root.name == "Error" else { return nil }
        return S3ErrorBody(code: root.value("Code") ?? "", message: root.value("Message") ?? "")
    }
}

/// One page of ListObjectsV2.
public struct S3ListPage: Sendable, Equatable {
    public var keys: [String]
    public var isTruncated: Bool
    public var nextContinuationToken: String?

    public static func parse(_ bytes: [UInt8]) -> S3ListPage? {
        guard let root = XMLNode.parse(bytes), root.name == "ListBucketResult" else { return nil }
        var keys: [String] = []
        for c in root.all("Contents") {
            guard let k = c.value("Key") else { return nil }
            keys.append(k)
        }
        let truncated: Bool
        switch root.value("IsTruncated") ?? "false" {
        case "true": truncated = true
        case "false": truncated = false
        default: return nil
        }
        let token = root.value("NextContinuationToken").flatMap { $0.isEmpty ? nil : $0 }
        // A truncated page without a token would make the caller list the same page forever.
        if truncated && token == nil { return nil }
        return S3ListPage(keys: keys, isTruncated: truncated, nextContinuationToken: token)
    }
}

enum S3MultipartXML {
    /// One page of ListMultipartUploads: (key, upload id) pairs and the markers of the
    /// next page (nil when this is the last).
    static func uploads(_ bytes: [UInt8]) -> (uploads: [(String, String)], next: (String, String)?)? {
        guard let root = XMLNode.parse(bytes), root.name == "ListMultipartUploadsResult" else { return nil }
        var out: [(String, String)] = []
        for u in root.all("Upload") {
            guard let k = u.value("Key"), let id = u.value("UploadId"), !id.isEmpty else { return nil }
            out.append((k, id))
        }
        guard root.value("IsTruncated") == "true" else { return (out, nil) }
        guard let k = root.value("NextKeyMarker"), let id = root.value("NextUploadIdMarker"), !k.isEmpty || !id.isEmpty else { return nil }
        return (out, (k, id))
    }

    /// The upload id of an InitiateMultipartUploadResult.
    static func uploadID(_ bytes: [UInt8]) -> String? {
        guard let root = XMLNode.parse(bytes), root.name == "InitiateMultipartUploadResult",
              let id = root.value("UploadId"), !id.isEmpty else { return nil }
        return id
    }

    /// True for a CompleteMultipartUploadResult; S3 may answer 200 with an Error body
    /// when the completion failed after it began, so a 200 alone proves nothing.
    static func completed(_ bytes: [UInt8]) -> Bool {
        XMLNode.parse(bytes)?.name == "CompleteMultipartUploadResult"
    }

    static func completeRequest(etags: [String]) -> [UInt8] {
        var s = "<CompleteMultipartUpload>"
        for (i, e) in etags.enumerated() {
            s += "<Part><PartNumber>\(i + 1)</PartNumber><ETag>\(escape(e))</ETag></Part>"
        }
        s += "</CompleteMultipartUpload>"
        return Array(s.utf8)
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
