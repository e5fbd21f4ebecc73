import AccessPolicy
import HTTPProxyWire
import NetAddress
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

// The one bridge between the wire's vocabulary (SOCKSWire) and the policy's
// (AccessPolicy): a request becomes facts, a refusal becomes a reply, an errno becomes
// a failure. The gateway, `explain`, the audit log and `replay` all use these.

extension RequestFacts {
    /// The facts of a negotiated request, before any resolution.
    public init(_ request: SOCKSRequest, client: IPEndpoint, listener: IPEndpoint, time: Int64?) {
        let destination: Destination =
            switch request.host {
            case .ipv4(let address): .address(.v4(address))
            case .ipv6(let address): .address(.v6(address))
            case .domain(let name): .hostName(name)
            }
        self.init(
            version: Version(request.version),
            command: Command(request.command),
            client: client,
            listener: listener,
            destination: destination,
            destinationPort: request.port,
            claimedUser: request.claimedUser,
            authMethod: request.authMethod == .usernamePassword ? .password : request.authMethod == .gssapi ? .gssapi : .none,
            time: time
        )
    }
}

extension RequestFacts.Command {
    public init(_ command: SOCKSCommand) {
        switch command {
        case .connect: self = .connect
        case .bind: self = .bind
        case .udpAssociate: self = .udp
        }
    }
}

extension RequestFacts.Version {
    public init(_ version: SOCKSVersion) {
        switch version {
        case .socks4: self = .socks4
        case .socks4a: self = .socks4a
        case .socks5: self = .socks5
        }
    }
}

extension SOCKSVersion {
    /// The SOCKS version of a request's protocol; nil for HTTP.
    public init?(_ version: RequestFacts.Version) {
        switch version {
        case .socks4: self = .socks4
        case .socks4a: self = .socks4a
        case .socks5: self = .socks5
        case .http: return nil
        }
    }
}

extension SOCKSRequestFailure {
    /// The policy's refusal in the gateway's terms.
    public init(_ refusal: Decision.Refusal) {
        switch refusal {
        // A limit is the ruleset's refusal too (SOCKS4 91, SOCKS5 0x02), not a fault of
        // the gateway's: see docs/policy-language.md, "Limits".
        // The gateway itself as the destination is the policy's refusal as well.
        case .notAllowed, .limitReached, .destinationIsGateway: self = .notAllowed
        case .notChainable: self = .commandNotSupported
        case .timedOut: self = .generalFailure
        case .identUnreachable: self = .identUnreachable
        case .identMismatch: self = .identMismatch
        }
    }

    /// The truthful reply for an outbound connect that failed with this errno. Errors
    /// with no SOCKS meaning are general failures.
    public init(errno code: Int32) {
        switch code {
        case ECONNREFUSED: self = .connectionRefused
        case ENETUNREACH, ENETDOWN: self = .networkUnreachable
        case EHOSTUNREACH, EHOSTDOWN: self = .hostUnreachable
        case ETIMEDOUT: self = .timedOut
        default: self = .generalFailure
        }
    }
}

extension Decision {
    /// The reply this decision means for the client: 90/0x00/200 when allowed, else the
    /// refusal's code.
    public func replyCode(for version: RequestFacts.Version) -> Int {
        version.replyCode(for: refusal.map(SOCKSRequestFailure.init))
    }
}

extension RequestFacts.Version {
    /// The code a client of this protocol hears: the SOCKS4 or SOCKS5 reply code, or the
    /// HTTP status; success when `failure` is nil. What the audit log records as `reply`.
    public func replyCode(for failure: SOCKSRequestFailure?) -> Int {
        switch self {
        case .socks4, .socks4a: Int(failure?.socks4Code.rawValue ?? SOCKS4ReplyCode.granted.rawValue)
        case .socks5: Int(failure?.socks5Code.rawValue ?? SOCKS5ReplyCode.succeeded.rawValue)
        case .http: (failure.map(ProxyStatus.init) ?? .established).code
        }
    }
}

extension ProxyStatus {
    /// The HTTP status for a request that failed (RFC 9110 §15): the policy's refusals,
    /// ident's included, are 403 (an HTTP client has no way to say who it is to identd:
    /// 407 would ask for what cannot help); a destination that cannot be reached is 502,
    /// one that does not answer in time 504.
    public init(_ failure: SOCKSRequestFailure) {
        switch failure {
        case .notAllowed, .identUnreachable, .identMismatch: self = .forbidden
        case .generalFailure, .networkUnreachable, .hostUnreachable, .connectionRefused: self = .badGateway
        case .timedOut: self = .gatewayTimeout
        case .commandNotSupported: self = .notImplemented
        case .addressTypeNotSupported: self = .badRequest
        }
    }
}

extension GSSAPIProtection {
    /// The level as the policy and the audit log name it.
    public var messageProtection: MessageProtection {
        switch self {
        case .none: .none
        case .integrity: .integrity
        case .confidentiality: .confidentiality
        }
    }

    public init(_ protection: MessageProtection) {
        switch protection {
        case .none: self = .none
        case .integrity: self = .integrity
        case .confidentiality: self = .confidentiality
        }
    }
}
