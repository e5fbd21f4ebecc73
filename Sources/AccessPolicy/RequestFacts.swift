import NetAddress

/// Everything the policy may look at to decide one request. The gateway fills it in;
/// `explain`, policy tests and audit replay build it from text. Nothing here refers to a
/// socket or a wire format.
public struct RequestFacts: Hashable, Sendable {
    /// The client's protocol: a SOCKS version, or an HTTP proxy request (CONNECT).
    public enum Version: String, Hashable, Sendable, CaseIterable {
        case socks4, socks4a, socks5, http
    }

    public enum Command: String, Hashable, Sendable, CaseIterable {
        case connect, bind, udp
    }

    public enum AuthMethod: String, Hashable, Sendable, CaseIterable {
        /// `gssapi`: RFC 1961; the claimed user is the principal GSS-API authenticated.
        case none, password, gssapi
    }

    /// What checked a password: `--password-file` or PAM (`--pam-service`).
    public enum PasswordSource: String, Hashable, Sendable, CaseIterable {
        case file, pam
    }

    /// What a GSS-API (RFC 1961) session negotiated, for the audit record.
    public struct GSSAPISecurity: Hashable, Sendable {
        /// `krb5`, or the mechanism's OID.
        public var mechanism: String
        public var protection: MessageProtection

        public init(mechanism: String, protection: MessageProtection) {
            self.mechanism = mechanism
            self.protection = protection
        }
    }

    public enum Destination: Hashable, Sendable, CustomStringConvertible {
        case address(IPAddress)
        case hostName(String)

        public var description: String {
            switch self {
            case .address(let address): address.description
            case .hostName(let name): name
            }
        }
    }

    public var version: Version
    public var command: Command
    public var client: IPEndpoint
    /// The gateway's address that the client connected to.
    public var listener: IPEndpoint
    public var destination: Destination
    public var destinationPort: UInt16
    /// For a host-name destination: the address the gateway resolved it to and will
    /// connect to, if resolution succeeded. CIDR conditions match this address, never
    /// another one; host-name conditions never cause a reverse lookup.
    public var resolvedAddress: IPAddress?
    /// The SOCKS4 USERID or the SOCKS5 username; nil when the client gave none.
    public var claimedUser: String?
    public var authMethod: AuthMethod
    /// For `auth gssapi`: the mechanism and the protection level.
    public var gssapi: GSSAPISecurity?
    /// For `auth password`: what checked the password (the password file or PAM).
    public var passwordSource: PasswordSource?
    /// When the request was made, in seconds since 1970 (UTC); time-window conditions
    /// need it. nil: no time known, and no time window matches.
    public var time: Int64?
    /// The load balancer the request came through (PROXY protocol); `client` and
    /// `listener` are then the addresses its header gave. Its client's identd cannot be
    /// asked: the client's connection ends at the balancer.
    public var balancer: IPEndpoint?
    /// The client's identd named the claimed user (set from the decision, `attributed(by:)`,
    /// before limits count the request).
    public var identConfirmed = false
    /// The directory's answer about the verified user's groups, if the decision asked
    /// (set by `attributed(by:)`, for `limit` lines with `group`).
    public var verifiedGroups: GroupAnswer?

    public init(
        version: Version, command: Command, client: IPEndpoint, listener: IPEndpoint,
        destination: Destination, destinationPort: UInt16, resolvedAddress: IPAddress? = nil,
        claimedUser: String? = nil, authMethod: AuthMethod = .none, time: Int64? = nil, gssapi: GSSAPISecurity? = nil
    ) {
        self.gssapi = gssapi
        self.version = version
        self.command = command
        self.client = client
        self.listener = listener
        self.destination = destination
        self.destinationPort = destinationPort
        self.resolvedAddress = resolvedAddress
        self.claimedUser = claimedUser
        self.authMethod = authMethod
        self.time = time
    }

    /// The claimed user, when something vouches for it: a password, GSS-API, or the
    /// client's identd naming the same user. A name that is only claimed (a SOCKS4 USERID,
    /// say) could be anyone's: `per user` limits do not count it as that user's.
    public var verifiedUser: String? {
        guard let claimedUser, authMethod != .none || identConfirmed else { return nil }
        return claimedUser
    }

    /// These facts with what `decision` learned about the user: whether identd confirmed
    /// the claimed name.
    public func attributed(by decision: Decision) -> RequestFacts {
        let confirmed: Bool = if let claimedUser, case .userID(let named) = decision.ident { named == claimedUser } else { false }
        guard confirmed || decision.groupsConsulted != nil else { return self }
        var facts = self
        facts.identConfirmed = confirmed
        facts.verifiedGroups = decision.groupsConsulted?.answer
        return facts
    }

    /// The address that will be connected to: the literal one, or the resolved one.
    public var destinationAddress: IPAddress? {
        switch destination {
        case .address(let address): address
        case .hostName: resolvedAddress
        }
    }
}

/// RFC 1961's per-message protection levels, with "none" (curl's and Dante's extension:
/// the context authenticates, nothing after it is wrapped).
public enum MessageProtection: String, Hashable, Sendable, Comparable, CaseIterable {
    case none, integrity, confidentiality

    private var rank: Int {
        switch self {
        case .none: 0
        case .integrity: 1
        case .confidentiality: 2
        }
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rank < rhs.rank }
}

extension Optional {
    /// A set of enum values as bits in `allCases` order; nil (any value) is all ones.
    func bitMask<Value: CaseIterable & Hashable>() -> UInt8 where Wrapped == Set<Value> {
        guard let values = self else { return 0xFF }
        return Value.allCases.enumerated().reduce(0) { values.contains($1.element) ? $0 | 1 << $1.offset : $0 }
    }
}
