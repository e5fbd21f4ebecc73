import NetAddress

/// A destination condition.
public enum DestinationPattern: Hashable, Sendable, CustomStringConvertible {
    /// Matches the literal address, or the address a host name resolved to.
    case network(IPNetwork)
    /// Matches a host-name request for exactly this name (case-insensitive).
    case hostName(String)
    /// `.example.com`: matches `example.com` and every name below it.
    case domainSuffix(String)

    func matches(_ facts: RequestFacts) -> Bool {
        switch self {
        case .network(let network):
            return facts.destinationAddress.map(network.contains) ?? false
        case .hostName(let name):
            guard case .hostName(let requested) = facts.destination else { return false }
            return Self.normalized(requested) == Self.normalized(name)
        case .domainSuffix(let suffix):
            guard case .hostName(let requested) = facts.destination else { return false }
            let name = Self.normalized(requested)
            let domain = Self.normalized(suffix.hasPrefix(".") ? String(suffix.dropFirst()) : suffix)
            return name == domain || name.hasSuffix("." + domain)
        }
    }

    /// DNS names compare without case and without a trailing dot.
    static func normalized(_ name: String) -> String {
        (name.hasSuffix(".") ? String(name.dropLast()) : name).lowercased()
    }

    public var description: String {
        switch self {
        case .network(let network): network.description
        case .hostName(let name): name
        case .domainSuffix(let suffix): suffix.hasPrefix(".") ? suffix : "." + suffix
        }
    }
}

/// One rule: a verdict and conditions, all of which must hold. A nil condition matches
/// anything.
public struct Rule: Hashable, Sendable {
    public var verdict: Decision.Verdict
    public var reference: RuleReference
    public var commands: Set<RequestFacts.Command>?
    public var sources: [IPNetwork]?
    public var destinations: [DestinationPattern]?
    public var ports: [ClosedRange<UInt16>]?
    public var users: Set<String>?
    public var versions: Set<RequestFacts.Version>?
    public var authMethods: Set<RequestFacts.AuthMethod>?

    public init(
        _ verdict: Decision.Verdict, _ reference: RuleReference = RuleReference(),
        commands: Set<RequestFacts.Command>? = nil, sources: [IPNetwork]? = nil,
        destinations: [DestinationPattern]? = nil, ports: [ClosedRange<UInt16>]? = nil,
        users: Set<String>? = nil, versions: Set<RequestFacts.Version>? = nil,
        authMethods: Set<RequestFacts.AuthMethod>? = nil
    ) {
        self.verdict = verdict
        self.reference = reference
        self.commands = commands
        self.sources = sources
        self.destinations = destinations
        self.ports = ports
        self.users = users
        self.versions = versions
        self.authMethods = authMethods
    }

    /// nil if every condition holds, else the first one that does not, in words.
    func firstMismatch(_ facts: RequestFacts) -> String? {
        if let commands, !commands.contains(facts.command) {
            return "command \(facts.command.rawValue) is not \(commands.map(\.rawValue).sorted().joined(separator: "|"))"
        }
        if let versions, !versions.contains(facts.version) {
            return "version \(facts.version.rawValue) is not \(versions.map(\.rawValue).sorted().joined(separator: "|"))"
        }
        if let authMethods, !authMethods.contains(facts.authMethod) {
            return "auth \(facts.authMethod.rawValue) is not \(authMethods.map(\.rawValue).sorted().joined(separator: "|"))"
        }
        if let sources, !sources.contains(where: { $0.contains(facts.client.address) }) {
            return "client \(facts.client.address) is not in \(sources.map(\.description).joined(separator: ", "))"
        }
        if let destinations, !destinations.contains(where: { $0.matches(facts) }) {
            let resolved = facts.resolvedAddress.map { " (resolved \($0))" } ?? ""
            return "destination \(facts.destination)\(resolved) is not \(destinations.map(\.description).joined(separator: ", "))"
        }
        if let ports, !ports.contains(where: { $0.contains(facts.destinationPort) }) {
            return "port \(facts.destinationPort) is not in the rule's ports"
        }
        if let users {
            guard let user = facts.claimedUser else { return "no user was claimed" }
            if !users.contains(user) { return "user \(user) is not \(users.sorted().joined(separator: ", "))" }
        }
        return nil
    }
}

/// Rules tried in order; the first that matches decides; no match is a deny. Rules are
/// given in Swift here; the policy language compiles to its own `PolicyDecider`.
public struct RuleList: PolicyDecider, Hashable {
    public var rules: [Rule]

    public init(_ rules: [Rule]) { self.rules = rules }

    public func decide(_ facts: RequestFacts) async -> Decision { decideNow(facts) }

    /// The same decision without suspending: rules in code never need ident.
    public func decideNow(_ facts: RequestFacts) -> Decision {
        var trace: [Decision.TraceStep] = []
        for rule in rules {
            if let mismatch = rule.firstMismatch(facts) {
                trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: mismatch))
                continue
            }
            trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: true, reason: "all conditions hold"))
            return Decision(
                verdict: rule.verdict,
                refusal: rule.verdict == .deny ? .notAllowed : nil,
                rule: rule.reference,
                trace: trace
            )
        }
        return Decision(verdict: .deny, refusal: .notAllowed, rule: nil, trace: trace)
    }

    /// The embedded default: clients on loopback may go anywhere, everyone else is
    /// denied. Safe to start anywhere: it can never be an open proxy.
    public static let loopbackClientsOnly = RuleList([
        Rule(
            .allow, RuleReference(label: "loopback clients"),
            sources: [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!]
        )
    ])
}
