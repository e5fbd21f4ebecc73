import NetAddress

// The vocabulary of SOCKS 4/4a (the NEC/Ying-Da Lee texts), SOCKS 5 (RFC 1928) and
// username/password authentication (RFC 1929). Codes are open structs rather than
// enums so that an unknown value read from the wire can still be named in a log.

/// A destination as a SOCKS request names it.
public enum SOCKSHost: Hashable, Sendable, CustomStringConvertible {
    case ipv4(IPv4Address)
    case ipv6(IPv6Address)
    /// A host name for the server to resolve (SOCKS4a, SOCKS5 ATYP 3).
    case domain(String)

    public init(_ address: IPAddress) {
        switch address {
        case .v4(let v4): self = .ipv4(v4)
        case .v6(let v6): self = .ipv6(v6)
        }
    }

    /// The host's address; nil for a name (which only a resolver turns into addresses).
    public var address: IPAddress? {
        switch self {
        case .ipv4(let address): .v4(address)
        case .ipv6(let address): .v6(address)
        case .domain: nil
        }
    }

    public var description: String {
        switch self {
        case .ipv4(let address): address.description
        case .ipv6(let address): address.description
        case .domain(let name): name
        }
    }
}

// MARK: SOCKS 4 and 4a

public struct SOCKS4Command: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let connect = SOCKS4Command(rawValue: 1)
    public static let bind = SOCKS4Command(rawValue: 2)
}

/// `VN=4 CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL]`.
public struct SOCKS4Request: Hashable, Sendable {
    public var command: SOCKS4Command
    public var port: UInt16
    public var address: IPv4Address
    public var userID: String
    /// Present for SOCKS4a: DSTIP was `0.0.0.x` with x ≠ 0.
    public var hostName: String?

    public init(command: SOCKS4Command, port: UInt16, address: IPv4Address, userID: String, hostName: String? = nil) {
        self.command = command
        self.port = port
        self.address = address
        self.userID = userID
        self.hostName = hostName
    }

    /// The destination the client asked for: the name for 4a, else the address.
    public var host: SOCKSHost { hostName.map(SOCKSHost.domain) ?? .ipv4(address) }
}

public struct SOCKS4ReplyCode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let granted = SOCKS4ReplyCode(rawValue: 90)
    public static let rejected = SOCKS4ReplyCode(rawValue: 91)
    /// The server cannot connect to identd on the client.
    public static let identUnreachable = SOCKS4ReplyCode(rawValue: 92)
    /// The client program and identd report different user-ids.
    public static let identMismatch = SOCKS4ReplyCode(rawValue: 93)

    /// The code's meaning as the SOCKS4 text words it, for `explain` and the review commands.
    public var meaning: String {
        switch self {
        case .granted: "granted"
        case .rejected: "rejected or failed"
        case .identUnreachable: "identd not reachable"
        case .identMismatch: "user-ids differ"
        default: "unknown code \(rawValue)"
        }
    }
}

/// `VN=0 CD DSTPORT DSTIP`. The reply's version byte is 0, not 4.
public struct SOCKS4Reply: Hashable, Sendable {
    public var code: SOCKS4ReplyCode
    public var port: UInt16
    public var address: IPv4Address

    public init(code: SOCKS4ReplyCode, port: UInt16 = 0, address: IPv4Address = .any) {
        self.code = code
        self.port = port
        self.address = address
    }
}

// MARK: SOCKS 5

public struct SOCKS5AuthMethod: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let noAuthentication = SOCKS5AuthMethod(rawValue: 0x00)
    public static let gssapi = SOCKS5AuthMethod(rawValue: 0x01)
    public static let usernamePassword = SOCKS5AuthMethod(rawValue: 0x02)
    public static let noAcceptableMethods = SOCKS5AuthMethod(rawValue: 0xFF)

    /// As `--methods` names it.
    public var name: String {
        switch self {
        case .noAuthentication: "none"
        case .gssapi: "gssapi"
        case .usernamePassword: "password"
        default: "0x" + String(rawValue, radix: 16)
        }
    }
}

/// `VER=5 NMETHODS METHODS…`.
public struct SOCKS5Greeting: Hashable, Sendable {
    public var methods: [SOCKS5AuthMethod]
    public init(methods: [SOCKS5AuthMethod]) { self.methods = methods }
}

/// `VER=1 ULEN UNAME PLEN PASSWD` (RFC 1929).
public struct UsernamePasswordRequest: Hashable, Sendable {
    public var username: String
    public var password: [UInt8]

    public init(username: String, password: [UInt8]) {
        self.username = username
        self.password = password
    }
}

public struct SOCKS5Command: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let connect = SOCKS5Command(rawValue: 1)
    public static let bind = SOCKS5Command(rawValue: 2)
    public static let udpAssociate = SOCKS5Command(rawValue: 3)
}

/// `VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT`.
public struct SOCKS5Request: Hashable, Sendable {
    public var command: SOCKS5Command
    public var host: SOCKSHost
    public var port: UInt16

    public init(command: SOCKS5Command, host: SOCKSHost, port: UInt16) {
        self.command = command
        self.host = host
        self.port = port
    }
}

public struct SOCKS5ReplyCode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let succeeded = SOCKS5ReplyCode(rawValue: 0x00)
    public static let generalFailure = SOCKS5ReplyCode(rawValue: 0x01)
    public static let notAllowedByRuleset = SOCKS5ReplyCode(rawValue: 0x02)
    public static let networkUnreachable = SOCKS5ReplyCode(rawValue: 0x03)
    public static let hostUnreachable = SOCKS5ReplyCode(rawValue: 0x04)
    public static let connectionRefused = SOCKS5ReplyCode(rawValue: 0x05)
    public static let ttlExpired = SOCKS5ReplyCode(rawValue: 0x06)
    public static let commandNotSupported = SOCKS5ReplyCode(rawValue: 0x07)
    public static let addressTypeNotSupported = SOCKS5ReplyCode(rawValue: 0x08)

    /// The code's meaning as RFC 1928 words it, for `explain` and the review commands.
    public var meaning: String {
        switch self {
        case .succeeded: "succeeded"
        case .generalFailure: "general SOCKS server failure"
        case .notAllowedByRuleset: "connection not allowed by ruleset"
        case .networkUnreachable: "network unreachable"
        case .hostUnreachable: "host unreachable"
        case .connectionRefused: "connection refused"
        case .ttlExpired: "TTL expired"
        case .commandNotSupported: "command not supported"
        case .addressTypeNotSupported: "address type not supported"
        default: "unknown code \(rawValue)"
        }
    }
}

/// `VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT`.
public struct SOCKS5Reply: Hashable, Sendable {
    public var code: SOCKS5ReplyCode
    public var host: SOCKSHost
    public var port: UInt16

    public init(code: SOCKS5ReplyCode, host: SOCKSHost = .ipv4(.any), port: UInt16 = 0) {
        self.code = code
        self.host = host
        self.port = port
    }
}

/// `RSV(2) FRAG ATYP DST.ADDR DST.PORT`, in front of every SOCKS5 UDP datagram.
public struct SOCKS5UDPHeader: Hashable, Sendable {
    /// 0 for a whole datagram; identgate does not reassemble fragments.
    public var fragment: UInt8
    public var host: SOCKSHost
    public var port: UInt16

    public init(fragment: UInt8 = 0, host: SOCKSHost, port: UInt16) {
        self.fragment = fragment
        self.host = host
        self.port = port
    }
}
