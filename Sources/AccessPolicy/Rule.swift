import NetAddress
import ProxyURL

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
            return HostName.normalized(requested) == name
        case .domainSuffix(let domain):
            guard case .hostName(let requested) = facts.destination else { return false }
            let name = HostName.normalized(requested)
            return name == domain || name.hasSuffix("." + domain)
        }
    }

    public var description: String {
        switch self {
        case .network(let network):
            network.prefixLength == (network.address.isIPv6 ? 128 : 32) ? network.address.description : network.description
        case .hostName(let name): name
        case .domainSuffix(let domain): "." + domain
        }
    }
}

extension Set<String> {
    /// The user is listed, or a `*@REALM` item names the realm of the principal it is.
    func containsUser(_ user: String) -> Bool {
        if contains(user) { return true }
        guard let at = user.lastIndex(of: "@") else { return false }
        return contains("*" + user[at...])
    }
}

enum HostName {
    /// DNS names compare without case and without a trailing dot.
    static func normalized(_ name: String) -> String {
        // Most names are already lower case without a final dot: keep them as they are.
        if !name.utf8.contains(where: { (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || $0 >= 0x80 }),
            name.utf8.last != UInt8(ascii: ".")
        {
            return name
        }
        return (name.hasSuffix(".") ? String(name.dropLast()) : name).lowercased()
    }
}

/// Days and hours of the week, in the policy's time zone: `mon-fri 08:00-18:00`.
/// Stored as minute-of-week ranges (Monday 00:00 is 0); a window past midnight
/// (`22:00-06:00`) continues into the next day.
public struct WeeklyWindow: Hashable, Sendable, CustomStringConvertible {
    public static let minutesPerWeek = 7 * 24 * 60

    public let description: String
    public let minuteRanges: [ClosedRange<Int>]

    /// `days`: 0 = Monday … 6 = Sunday; `start`/`end`: minutes after midnight, end
    /// exclusive; end ≤ start means the window runs past midnight.
    public init(days: [Int], start: Int, end: Int, description: String) {
        var ranges: [ClosedRange<Int>] = []
        for day in days {
            let from = day * 1440 + start
            let length = end > start ? end - start : 1440 - start + end
            let to = from + length - 1
            if to < Self.minutesPerWeek {
                ranges.append(from...to)
            } else {
                ranges.append(from...(Self.minutesPerWeek - 1))
                ranges.append(0...(to - Self.minutesPerWeek))
            }
        }
        self.minuteRanges = ranges
        self.description = description
    }

    func contains(minuteOfWeek: Int) -> Bool {
        minuteRanges.contains { $0.contains(minuteOfWeek) }
    }

    /// Minute of the week (Monday 00:00 = 0) of a Unix time, shifted by a UTC offset.
    public static func minuteOfWeek(time: Int64, utcOffsetSeconds: Int) -> Int {
        let minutes = (time + Int64(utcOffsetSeconds)).floorDivided(by: 60)
        let day = minutes.floorDivided(by: 1440)
        // 1970-01-01 was a Thursday: day 0 is weekday 3 when Monday is 0.
        let weekday = Int((day + 3).floorModulo(7))
        return weekday * 1440 + Int(minutes.floorModulo(1440))
    }
}

extension Int64 {
    func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }

    func floorModulo(_ divisor: Int64) -> Int64 {
        let remainder = self % divisor
        return remainder < 0 ? remainder + divisor : remainder
    }
}

/// One rule: a verdict and conditions, all of which must hold. A nil condition matches
/// anything.
public struct Rule: Hashable, Sendable {
    public var verdict: Decision.Verdict
    public var reference: RuleReference
    /// The rule as written, for `explain` and lint messages.
    public var text: String
    public var commands: Set<RequestFacts.Command>?
    public var sources: [IPNetwork]?
    public var destinations: [DestinationPattern]?
    public var ports: [ClosedRange<UInt16>]?
    public var users: Set<String>?
    public var versions: Set<RequestFacts.Version>?
    public var authMethods: Set<RequestFacts.AuthMethod>?
    public var times: [WeeklyWindow]?
    /// The client's identd must confirm the claimed user (or name any user when none
    /// is claimed).
    public var requiresIdent: Bool
    /// The verified user must be in one of these groups (the directory, asked by the
    /// engine through the lookup given with the request, like identd).
    public var groups: Set<String>? = nil
    /// `via URL, …` (allow rules): the parents to connect through, tried in order; nil:
    /// connect directly.
    public var route: [SOCKSURL]?

    public init(
        _ verdict: Decision.Verdict, _ reference: RuleReference = RuleReference(), text: String = "",
        commands: Set<RequestFacts.Command>? = nil, sources: [IPNetwork]? = nil,
        destinations: [DestinationPattern]? = nil, ports: [ClosedRange<UInt16>]? = nil,
        users: Set<String>? = nil, versions: Set<RequestFacts.Version>? = nil,
        authMethods: Set<RequestFacts.AuthMethod>? = nil, times: [WeeklyWindow]? = nil,
        requiresIdent: Bool = false
    ) {
        self.verdict = verdict
        self.reference = reference
        self.text = text
        self.commands = commands
        self.sources = sources
        self.destinations = destinations
        self.ports = ports
        self.users = users
        self.versions = versions
        self.authMethods = authMethods
        self.times = times
        self.requiresIdent = requiresIdent
    }

    /// Every condition other than `ident` holds: `firstMismatch` without the words, for
    /// the paths that run per session (limits) and must not build text.
    func conditionsHold(_ facts: RequestFacts, utcOffsetSeconds: Int) -> Bool {
        if let commands, !commands.contains(facts.command) { return false }
        if let versions, !versions.contains(facts.version) { return false }
        if let authMethods, !authMethods.contains(facts.authMethod) { return false }
        if let sources, !sources.contains(where: { $0.contains(facts.client.address) }) { return false }
        if let destinations, !destinations.contains(where: { $0.matches(facts) }) { return false }
        if let ports, !ports.contains(where: { $0.contains(facts.destinationPort) }) { return false }
        if let users {
            guard let user = facts.claimedUser, users.containsUser(user) else { return false }
        }
        if let times {
            guard let time = facts.time else { return false }
            let minute = WeeklyWindow.minuteOfWeek(time: time, utcOffsetSeconds: utcOffsetSeconds)
            if !times.contains(where: { $0.contains(minuteOfWeek: minute) }) { return false }
        }
        return true
    }

    /// nil if every condition other than `ident` holds, else the first that does not,
    /// in words. `ident` is checked by the engine, which asks identd at most once.
    func firstMismatch(_ facts: RequestFacts, utcOffsetSeconds: Int) -> String? {
        if let commands, !commands.contains(facts.command) {
            return "command \(facts.command.rawValue) is not \(Self.list(commands.map(\.rawValue)))"
        }
        if let versions, !versions.contains(facts.version) {
            return "version \(facts.version.rawValue) is not \(Self.list(versions.map(\.rawValue)))"
        }
        if let authMethods, !authMethods.contains(facts.authMethod) {
            return "auth \(facts.authMethod.rawValue) is not \(Self.list(authMethods.map(\.rawValue)))"
        }
        if let sources, !sources.contains(where: { $0.contains(facts.client.address) }) {
            return "client \(facts.client.address.unmapped) is not in \(sources.map(\.description).joined(separator: ", "))"
        }
        if let destinations, !destinations.contains(where: { $0.matches(facts) }) {
            var destination = "\(facts.destination)"
            if case .hostName = facts.destination {
                destination += facts.resolvedAddress.map { " (resolved \($0))" } ?? " (not resolved)"
            }
            return "destination \(destination) is not \(destinations.map(\.description).joined(separator: ", "))"
        }
        if let ports, !ports.contains(where: { $0.contains(facts.destinationPort) }) {
            let text = ports.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            return "port \(facts.destinationPort) is not \(text.joined(separator: ", "))"
        }
        if let users {
            guard let user = facts.claimedUser else { return "no user was claimed" }
            if !users.containsUser(user) { return "user \(user) is not \(Self.list(users))" }
        }
        if let times {
            guard let time = facts.time else { return "no request time given" }
            let minute = WeeklyWindow.minuteOfWeek(time: time, utcOffsetSeconds: utcOffsetSeconds)
            if !times.contains(where: { $0.contains(minuteOfWeek: minute) }) {
                return "time is outside \(times.map(\.description).joined(separator: ", "))"
            }
        }
        return nil
    }

    static func list<S: Sequence<String>>(_ values: S) -> String {
        values.sorted().joined(separator: ", ")
    }
}

extension Rule {
    /// True when a destination condition of this rule names the request's destination
    /// itself, not a network or domain around it: the address as a single host (/32,
    /// /128), or the exact host name. The gateway relays to its own listening address
    /// only for such a rule.
    public func namesDestination(of facts: RequestFacts) -> Bool {
        guard let destinations else { return false }
        return destinations.contains { pattern in
            switch pattern {
            case .network(let network):
                let host = network.prefixLength == (network.address.isIPv6 ? 128 : 32)
                return host && facts.destinationAddress.map { network.contains($0) } == true
            case .hostName:
                return pattern.matches(facts)
            case .domainSuffix:
                return false
            }
        }
    }
}
