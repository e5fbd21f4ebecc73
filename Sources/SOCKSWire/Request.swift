import NIOCore
import NetAddress

public enum SOCKSVersion: String, Hashable, Sendable {
    case socks4, socks4a, socks5
}

public enum SOCKSCommand: String, Hashable, Sendable {
    case connect, bind
    case udpAssociate = "udp"
}

/// A complete, well-formed request of any version, as the gateway acts on it.
public struct SOCKSRequest: Hashable, Sendable {
    public var version: SOCKSVersion
    public var command: SOCKSCommand
    public var host: SOCKSHost
    public var port: UInt16
    /// The SOCKS4 USERID (nil when empty) or the RFC 1929 username.
    public var claimedUser: String?
    /// The SOCKS5 method the server chose; nil for SOCKS4.
    public var authMethod: SOCKS5AuthMethod?

    public init(
        version: SOCKSVersion, command: SOCKSCommand, host: SOCKSHost, port: UInt16,
        claimedUser: String? = nil, authMethod: SOCKS5AuthMethod? = nil
    ) {
        self.version = version
        self.command = command
        self.host = host
        self.port = port
        self.claimedUser = claimedUser
        self.authMethod = authMethod
    }
}

/// Why a request is refused, in the gateway's terms; the state machine turns it into
/// each protocol's reply code.
public enum SOCKSRequestFailure: Hashable, Sendable {
    case notAllowed
    case identUnreachable
    case identMismatch
    case generalFailure
    case networkUnreachable
    case hostUnreachable
    case connectionRefused
    case timedOut
    case commandNotSupported
    case addressTypeNotSupported

    /// SOCKS4 has one failure code besides the two ident codes.
    public var socks4Code: SOCKS4ReplyCode {
        switch self {
        case .identUnreachable: .identUnreachable
        case .identMismatch: .identMismatch
        case .notAllowed, .generalFailure, .networkUnreachable, .hostUnreachable, .connectionRefused, .timedOut,
            .commandNotSupported, .addressTypeNotSupported:
            .rejected
        }
    }

    /// SOCKS5 has no ident codes: an ident failure is "not allowed by ruleset". A
    /// connect time-out is 0x06 ("TTL expired"), the code servers commonly give for
    /// ETIMEDOUT; RFC 1928 has no closer one.
    public var socks5Code: SOCKS5ReplyCode {
        switch self {
        case .notAllowed, .identUnreachable, .identMismatch: .notAllowedByRuleset
        case .generalFailure: .generalFailure
        case .networkUnreachable: .networkUnreachable
        case .hostUnreachable: .hostUnreachable
        case .connectionRefused: .connectionRefused
        case .timedOut: .ttlExpired
        case .commandNotSupported: .commandNotSupported
        case .addressTypeNotSupported: .addressTypeNotSupported
        }
    }
}

/// Anything the server sends during negotiation.
public enum SOCKSServerMessage: Hashable, Sendable {
    case socks4Reply(SOCKS4Reply)
    case methodSelection(SOCKS5AuthMethod)
    case usernamePasswordReply(success: Bool)
    case socks5Reply(SOCKS5Reply)
    case gssapi(GSSAPIMessage)
}

extension ByteBuffer {
    @discardableResult
    public mutating func writeSOCKSServerMessage(_ message: SOCKSServerMessage) -> Int {
        switch message {
        case .socks4Reply(let reply): writeSOCKS4Reply(reply)
        case .methodSelection(let method): writeSOCKS5MethodSelection(method)
        case .usernamePasswordReply(let success): writeUsernamePasswordReply(success: success)
        case .socks5Reply(let reply): writeSOCKS5Reply(reply)
        case .gssapi(let message): writeGSSAPIMessage(message)
        }
    }
}

extension SOCKSServerMessage {
    /// The success reply, carrying the address the gateway bound: for CONNECT, the
    /// outbound socket's local address; for UDP ASSOCIATE, the relay's address; for
    /// BIND, the listening address (first reply) or the peer's (second). SOCKS4 cannot
    /// carry IPv6: it gets 0.0.0.0.
    public static func granted(version: SOCKSVersion, boundAddress: IPEndpoint) -> SOCKSServerMessage {
        switch version {
        case .socks4, .socks4a:
            let address: IPv4Address =
                if case .v4(let v4) = boundAddress.address.unmapped { v4 } else { .any }
            return .socks4Reply(SOCKS4Reply(code: .granted, port: boundAddress.port, address: address))
        case .socks5:
            return .socks5Reply(SOCKS5Reply(code: .succeeded, host: SOCKSHost(boundAddress.address), port: boundAddress.port))
        }
    }

    /// The failure reply in the request's protocol; the caller closes after sending it.
    public static func failed(_ failure: SOCKSRequestFailure, version: SOCKSVersion) -> SOCKSServerMessage {
        switch version {
        case .socks4, .socks4a: .socks4Reply(SOCKS4Reply(code: failure.socks4Code))
        case .socks5: .socks5Reply(SOCKS5Reply(code: failure.socks5Code))
        }
    }

    /// The reply code a request reply carries (nil for negotiation messages).
    public var replyCode: UInt8? {
        switch self {
        case .socks4Reply(let reply): reply.code.rawValue
        case .socks5Reply(let reply): reply.code.rawValue
        case .methodSelection, .usernamePasswordReply, .gssapi: nil
        }
    }
}
