/// The statuses the proxy answers with itself (RFC 9110 §15), each with the short text
/// its body says. The text names the kind of failure, never a policy detail: which rule
/// refused, or why, is for the audit log and `explain`, not for the client.
public enum ProxyStatus: Int, Hashable, Sendable, CaseIterable {
    case established = 200
    case badRequest = 400
    case forbidden = 403
    case methodNotAllowed = 405
    case requestTimeout = 408
    case proxyAuthenticationRequired = 407
    case uriTooLong = 414
    case headersTooLarge = 431
    case notImplemented = 501
    case badGateway = 502
    case serviceUnavailable = 503
    case gatewayTimeout = 504

    public var code: Int { rawValue }

    public var reasonPhrase: String {
        switch self {
        case .established: "Connection established"
        case .badRequest: "Bad Request"
        case .forbidden: "Forbidden"
        case .methodNotAllowed: "Method Not Allowed"
        case .requestTimeout: "Request Timeout"
        case .proxyAuthenticationRequired: "Proxy Authentication Required"
        case .uriTooLong: "URI Too Long"
        case .headersTooLarge: "Request Header Fields Too Large"
        case .notImplemented: "Not Implemented"
        case .badGateway: "Bad Gateway"
        case .serviceUnavailable: "Service Unavailable"
        case .gatewayTimeout: "Gateway Timeout"
        }
    }

    /// The body's one line.
    public var text: String {
        switch self {
        case .established: ""
        case .badRequest: "The request is not one this proxy can read."
        case .forbidden: "The gateway's policy does not allow this request."
        case .methodNotAllowed: "This proxy does not serve that method."
        case .requestTimeout: "The request did not arrive in time."
        case .proxyAuthenticationRequired: "The gateway needs to know who you are."
        case .uriTooLong: "The request target is too long."
        case .headersTooLarge: "The request's header is too large."
        case .notImplemented: "This proxy does not serve that request."
        case .badGateway: "The destination could not be reached."
        case .serviceUnavailable: "The gateway cannot serve this request now."
        case .gatewayTimeout: "The destination did not answer in time."
        }
    }
}

/// What the proxy itself writes to a client: the answer to CONNECT, and the statuses it
/// answers with in place of a destination. Written as bytes because CONNECT's answer is
/// the last HTTP on the connection: the relay starts right after it.
public enum ProxyReply {
    /// `HTTP/1.1 200 Connection established` and an empty line (RFC 9110 §9.3.6: no
    /// Content-Length or Transfer-Encoding in a 2xx answer to CONNECT).
    public static func established(minorVersion: Int = 1) -> [UInt8] {
        Array("HTTP/1.\(minorVersion == 0 ? 0 : 1) 200 Connection established\r\n\r\n".utf8)
    }

    /// An answer with a status of the proxy's own, a one-line text body, `Connection: close`
    /// unless `keepAlive`, and for 407 a challenge per scheme offered (`Basic
    /// realm="identgate"`, `Negotiate`).
    public static func status(
        _ status: ProxyStatus, minorVersion: Int = 1, challenges: [String] = [], keepAlive: Bool = false, via: String? = nil
    ) -> [UInt8] {
        var head = "HTTP/1.\(minorVersion == 0 ? 0 : 1) \(status.code) \(status.reasonPhrase)\r\n"
        for field in fields(status, challenges: challenges, keepAlive: keepAlive, via: via) {
            head += "\(field.name): \(field.value)\r\n"
        }
        return Array((head + "\r\n" + body(status)).utf8)
    }

    /// The header fields of such an answer (for a writer that frames the head itself).
    public static func fields(
        _ status: ProxyStatus, challenges: [String] = [], keepAlive: Bool = false, via: String? = nil
    ) -> [ForwardedHeaders.Field] {
        var fields = challenges.map { (name: "Proxy-Authenticate", value: $0) }
        if let via { fields.append((name: "Via", value: via)) }
        fields.append((name: "Content-Type", value: "text/plain; charset=utf-8"))
        fields.append((name: "Content-Length", value: "\(body(status).utf8.count)"))
        if !keepAlive { fields.append((name: "Connection", value: "close")) }
        return fields
    }

    /// The answer's body: its one line of text.
    public static func body(_ status: ProxyStatus) -> String {
        status.text + "\n"
    }
}
