/// What a forwarding proxy does to a message's header fields on the way through (RFC 9110
/// §7.6): the hop-by-hop fields (Connection and every field it names, and the ones each
/// connection sets for itself) are removed, `Via` gets this hop. Framing fields
/// (Content-Length, Transfer-Encoding) are kept: the body is passed on as it was framed.
public enum ForwardedHeaders {
    public typealias Field = (name: String, value: String)

    /// Never forwarded, whatever Connection says (lowercased).
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer",
        "upgrade",
    ]

    /// `fields` without the hop-by-hop ones, `Via: <received-protocol> <by>` appended
    /// (after any `Via` already there), and `Host` set to `host` when given (a request
    /// in absolute-form names its host in the target; RFC 9112 §3.2.2).
    public static func forwarded(_ fields: [Field], via: String, host: String? = nil) -> [Field] {
        let named = Set(
            fields.filter { $0.name.lowercased() == "connection" }
                .flatMap { $0.value.split(separator: ",").map { $0.trimmingSpaces.lowercased() } })
        var out = fields.filter { field in
            let name = field.name.lowercased()
            return !hopByHop.contains(name) && !named.contains(name) && !(host != nil && name == "host")
        }
        if let host { out.insert((name: "Host", value: host), at: 0) }
        out.append((name: "Via", value: via))
        return out
    }

    /// Whether the sender will close the connection after this message: `Connection:
    /// close`, or HTTP/1.0 without `Connection: keep-alive` (RFC 9112 §9.3).
    public static func closesAfter(_ fields: [Field], minorVersion: Int) -> Bool {
        let options = fields.filter { $0.name.lowercased() == "connection" || $0.name.lowercased() == "proxy-connection" }
            .flatMap { $0.value.split(separator: ",").map { $0.trimmingSpaces.lowercased() } }
        if options.contains("close") { return true }
        return minorVersion == 0 && !options.contains("keep-alive")
    }

    /// The message's Transfer-Encoding is absent or exactly `chunked`: the only framing a
    /// body can be passed on in unchanged (a coding before chunked would be lost when the
    /// body is re-chunked).
    public static func framingIsForwardable(_ fields: [Field]) -> Bool {
        let codings = fields.filter { $0.name.lowercased() == "transfer-encoding" }
            .flatMap { $0.value.split(separator: ",").map { $0.trimmingSpaces.lowercased() } }
        return codings.isEmpty || codings == ["chunked"]
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
