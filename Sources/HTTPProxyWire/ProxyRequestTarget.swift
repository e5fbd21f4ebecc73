import NetAddress

/// Where an HTTP proxy request asks to go, read from its method and request-target
/// (RFC 9112 §3.2): CONNECT's authority-form (`host:port`), or the absolute-form of a
/// request to forward (`http://host[:port]/path`). The origin-form (`/path`) and the
/// asterisk-form are for an origin server, not a proxy.
public enum ProxyRequestTarget: Hashable, Sendable {
    /// CONNECT: a tunnel to the host's port.
    case tunnel(host: ProxyTargetHost, port: UInt16)
    /// A request to forward: to the host's port, with this origin-form target (`/` at least).
    case forward(host: ProxyTargetHost, port: UInt16, originForm: String)

    public var host: ProxyTargetHost {
        switch self {
        case .tunnel(let host, _), .forward(let host, _, _): host
        }
    }

    public var port: UInt16 {
        switch self {
        case .tunnel(_, let port), .forward(_, let port, _): port
        }
    }

    /// The longest request-target read (RFC 9112 §3 recommends supporting 8,000 octets);
    /// longer: 414.
    public static let maximumLength = 8192
    /// The longest host name (RFC 1035's limit on a name's text).
    public static let maximumHostLength = 253

    /// The target of a request with this method and request-target.
    public static func parse(method: String, target: String) throws(ProxyRequestError) -> ProxyRequestTarget {
        guard target.utf8.count <= maximumLength else {
            throw ProxyRequestError(.uriTooLong, "the request target is over \(maximumLength) bytes")
        }
        if method == "CONNECT" {
            let (host, port) = try authority(Substring(target), defaultPort: nil)
            return .tunnel(host: host, port: port)
        }
        guard let separator = target.range(of: "://") else {
            throw ProxyRequestError(
                .badRequest, "a proxy request names its destination: CONNECT host:port, or an absolute URL (http://host/path)")
        }
        let scheme = target[..<separator.lowerBound].lowercased()
        guard scheme == "http" else {
            throw ProxyRequestError(.badRequest, "only http:// URLs are forwarded (for https://, use CONNECT)")
        }
        let rest = target[separator.upperBound...]
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var originForm = String(rest[authorityEnd...])
        if let fragment = originForm.firstIndex(of: "#") { originForm = String(originForm[..<fragment]) }
        if originForm.isEmpty || originForm.first == "?" { originForm = "/" + originForm }
        let authorityText = rest[..<authorityEnd]
        guard !authorityText.contains("@") else {
            throw ProxyRequestError(.badRequest, "user information in the URL is not forwarded")
        }
        let (host, port) = try authority(authorityText, defaultPort: 80)
        return .forward(host: host, port: port, originForm: originForm)
    }

    /// `host:port`, `[v6]:port`; the port may be left out where there is a default.
    public static func authority(_ text: Substring, defaultPort: UInt16?) throws(ProxyRequestError) -> (ProxyTargetHost, UInt16) {
        let hostText: Substring
        var portText: Substring?
        if text.first == "[" {
            guard let close = text.firstIndex(of: "]") else { throw ProxyRequestError(.badRequest, "an IPv6 address without ']'") }
            hostText = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw ProxyRequestError(.badRequest, "text after the IPv6 address") }
                portText = after.dropFirst()
            }
            guard let address = IPv6Address(String(hostText)) else {
                throw ProxyRequestError(.badRequest, "not an IPv6 address in brackets")
            }
            return (.address(.v6(address)), try port(portText, defaultPort: defaultPort))
        }
        // Bytes, not Characters: a target is ASCII when it is valid, and a Character walk
        // costs more than the rest of the request's way through the direct driver.
        if let colon = text.utf8.lastIndex(of: UInt8(ascii: ":")) {
            hostText = text[..<colon]
            portText = text[text.utf8.index(after: colon)...]
        } else {
            hostText = text
        }
        let port = try port(portText, defaultPort: defaultPort)
        if let address = IPv4Address(String(hostText)) { return (.address(.v4(address)), port) }
        return (.name(try hostName(hostText)), port)
    }

    private static func port(_ text: Substring?, defaultPort: UInt16?) throws(ProxyRequestError) -> UInt16 {
        guard let text, !text.isEmpty else {
            guard let defaultPort else { throw ProxyRequestError(.badRequest, "CONNECT needs host:port") }
            return defaultPort
        }
        guard text.utf8.count <= 5, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
            let port = UInt16(text), port > 0
        else {
            throw ProxyRequestError(.badRequest, "the port is not a number from 1 to 65535")
        }
        return port
    }

    /// A DNS name as RFC 3986's reg-name allows it here: letters, digits, '-', '_' and
    /// '.', lowercased. Percent-encoding and the other sub-delims name nothing a resolver
    /// would find.
    private static func hostName(_ text: Substring) throws(ProxyRequestError) -> String {
        guard !text.isEmpty else { throw ProxyRequestError(.badRequest, "no host") }
        guard text.utf8.count <= maximumHostLength else {
            throw ProxyRequestError(.badRequest, "the host name is over \(maximumHostLength) bytes")
        }
        guard text.unicodeScalars.allSatisfy({ $0.isASCII && (isAlphanumeric($0) || "-_.".unicodeScalars.contains($0)) }) else {
            throw ProxyRequestError(.badRequest, "the host is not a DNS name or an IP address")
        }
        return text.lowercased()
    }

    private static func isAlphanumeric(_ scalar: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
    }
}

/// The host of a proxy request's target.
public typealias ProxyTargetHost = NetworkHost

/// A request the proxy answers itself, with the status and a short reason for the body.
public struct ProxyRequestError: Error, Hashable, Sendable, CustomStringConvertible {
    public var status: ProxyStatus
    public var reason: String
    public var description: String { "\(status.code) \(status.reasonPhrase): \(reason)" }

    public init(_ status: ProxyStatus, _ reason: String) {
        self.status = status
        self.reason = reason
    }
}
