import AccessPolicy
import NetAddress

/// One axis of the request space. Addresses, ports and times are numbers; everything else
/// is a short numbered list of values (`RequestSpace` names them).
enum Dimension: Int, CaseIterable, Sendable {
    /// The client's address, IPv4 as IPv4-mapped IPv6 (`IPNetwork.mappedRange`).
    case client
    case command, version, auth
    /// A literal address (0) or a host name (1).
    case destinationKind
    /// Which kind of host name (`RequestSpace.names`).
    case destinationName
    /// For a host name: not resolved (0) or resolved (1).
    case resolved
    /// The literal or resolved destination address, as `client`.
    case destinationAddress
    case port
    /// Minute of the week in UTC, Monday 00:00 = 0.
    case time
    /// Which claimed user (`RequestSpace.users`; 0: none).
    case user
    /// What the client's identd answers (`IdentAnswerKind`).
    case ident
    /// The directory answers (0) or does not (1).
    case directory
    /// The verified user's groups as a bit mask over `RequestSpace.groups`.
    case groups
}

/// What the client's identd answers, as concrete answers both policies see alike.
enum IdentAnswerKind: Int, CaseIterable {
    /// No usable answer (unreachable).
    case fails
    /// The claimed user's name as the client gave it.
    case claimedName
    /// The claimed name without `@REALM` (a local realm's short name).
    case shortName
    /// Some other user.
    case otherUser
}

/// The values of the finite dimensions, drawn from both policies: every host name, domain,
/// user and group either names, plus one fresh value for "any other".
struct RequestSpace: Sendable {
    enum NameClass: Hashable, Sendable {
        /// A name under no domain either policy names, and not named itself.
        case unnamed
        /// Exactly this name (as written in a rule, normalized).
        case exactly(String)
        /// Any name under this domain that no rule names itself.
        case below(String)
    }

    let names: [NameClass]
    /// A host name of each class.
    let hostNames: [String]
    /// Index 0: no user claimed.
    let users: [String?]
    let groups: [String]
    let localRealms: Set<String>

    /// The name a test uses for "any other": chosen so that no rule names it.
    static let otherLabel = "other-name"
    static let otherUser = "other-user"
    static let identOther = "identd-other-user"
    /// The most group names an exact comparison takes: the groups dimension has 2^n values.
    static let mostGroups = 10

    init(_ policies: [Policy]) {
        var exact: Set<String> = []
        var domains: Set<String> = []
        var users: Set<String> = []
        var realms: Set<String> = []
        var groups: Set<String> = []
        for policy in policies {
            realms.formUnion(policy.localRealms)
            for rule in policy.rules + policy.limits.map(\.conditions) {
                for pattern in rule.destinations ?? [] {
                    switch pattern {
                    case .network: break
                    case .hostName(let name): exact.insert(name)
                    case .domainSuffix(let domain): domains.insert(domain)
                    }
                }
                for user in rule.users ?? [] {
                    if user.hasPrefix("*@") { realms.insert(String(user.dropFirst(2))) } else { users.insert(user) }
                }
                groups.formUnion(rule.groups ?? [])
            }
        }
        var names: [NameClass] = [.unnamed]
        names += exact.union(domains).sorted().map { .exactly($0) }
        names += domains.sorted().map { .below($0) }
        self.names = names
        let named = exact.union(domains)
        /// A fresh name under `domain` (nil: under no named domain) that no rule names
        /// and that no named domain other than `domain`'s own ancestors holds.
        func fresh(under domain: String?) -> String {
            for attempt in 0...named.count {
                let label = attempt == 0 ? Self.otherLabel : "\(Self.otherLabel)-\(attempt)"
                // Under no domain: one label, which only a domain of that very name holds.
                let name = domain.map { "\(label).\($0)" } ?? label
                let clashes = named.contains { other in
                    guard name == other || name.hasSuffix("." + other) else { return false }
                    guard let domain else { return true }
                    return !(domain == other || domain.hasSuffix("." + other))
                }
                if !clashes { return name }
            }
            return "\(Self.otherLabel)-unused"  // not reached: more labels than named names
        }
        self.hostNames = names.map { name in
            switch name {
            case .unnamed: fresh(under: nil)
            case .exactly(let name): name
            case .below(let domain): fresh(under: domain)
            }
        }
        var claimed: Set<String> = users
        for realm in realms {
            claimed.insert("\(Self.otherUser)@\(realm)")
            for user in users where !user.contains("@") { claimed.insert("\(user)@\(realm)") }
        }
        claimed.remove(Self.otherUser)
        self.users = [nil, Self.otherUser] + claimed.sorted()
        self.groups = groups.sorted()
        self.localRealms = realms
    }

    /// The number of values of each finite dimension; nil for the numeric ones.
    func size(of dimension: Dimension) -> Int? {
        switch dimension {
        case .client, .destinationAddress, .port, .time: nil
        case .command: RequestFacts.Command.allCases.count
        case .version: RequestFacts.Version.allCases.count
        case .auth: RequestFacts.AuthMethod.allCases.count
        case .destinationKind, .resolved, .directory: 2
        case .destinationName: names.count
        case .user: users.count
        case .ident: IdentAnswerKind.allCases.count
        case .groups: 1 << groups.count
        }
    }

    /// The whole space: every value of every dimension.
    var everything: Region {
        Region(
            Dimension.allCases.map { dimension in
                switch dimension {
                case .client, .destinationAddress: IntervalSet(0...UInt128.max)
                case .port: IntervalSet(0...65535)
                case .time: IntervalSet(0...UInt128(WeeklyWindow.minutesPerWeek - 1))
                default: IntervalSet(0...UInt128((size(of: dimension) ?? 1) - 1))
                }
            })
    }

    /// The classes of names a destination pattern matches.
    func nameClasses(matching pattern: DestinationPattern) -> [Int] {
        names.indices.filter { index in
            let name = hostNames[index]
            switch pattern {
            case .network: return false
            case .hostName(let wanted): return name == wanted
            case .domainSuffix(let domain): return name == domain || name.hasSuffix("." + domain)
            }
        }
    }
}

/// A box of the request space: a set of values on every dimension.
struct Region: Hashable, Sendable {
    var sets: [IntervalSet]

    init(_ sets: [IntervalSet]) {
        self.sets = sets
    }

    subscript(_ dimension: Dimension) -> IntervalSet {
        get { sets[dimension.rawValue] }
        set { sets[dimension.rawValue] = newValue }
    }

    /// The region without `other`'s requests, as disjoint boxes.
    func subtracting(_ other: Region) -> [Region] {
        var pieces: [Region] = []
        var rest = self
        for index in sets.indices {
            let outside = rest.sets[index].subtracting(other.sets[index])
            if !outside.isEmpty {
                var piece = rest
                piece.sets[index] = outside
                pieces.append(piece)
            }
            rest.sets[index] = rest.sets[index].intersection(other.sets[index])
            if rest.sets[index].isEmpty { return pieces }
        }
        return pieces  // `rest` lies inside `other`
    }

    /// The two parts of the region inside and outside `part` on `dimension`.
    func split(_ dimension: Dimension, by part: IntervalSet) -> (inside: Region, outside: Region) {
        var inside = self
        var outside = self
        inside[dimension] = self[dimension].intersection(part)
        outside[dimension] = self[dimension].subtracting(part)
        return (inside, outside)
    }
}

/// The IPv4-mapped block (`::ffff:0:0/96`): IPv4 addresses in the one 128-bit space.
let mappedIPv4 = IntervalSet((UInt128(0xFFFF) << 32)...(UInt128(0xFFFF) << 32 | 0xFFFF_FFFF))

extension IntervalSet {
    /// Every address of both families.
    public static let allAddresses = IntervalSet(0...UInt128.max)

    /// The addresses as the fewest CIDR blocks, IPv4 ones as IPv4.
    public var cidrs: [String] { RegionText.cidrs(self) }

    /// The addresses of these networks. An IPv6 network never matches an IPv4-mapped
    /// address (the engine compares those as IPv4), so its part of that block is left out.
    public init(networks: [IPNetwork]) {
        let ranges = networks.map { network -> IntervalSet in
            let range = IntervalSet(network.mappedRange)
            return network.address.isIPv6 ? range.subtracting(mappedIPv4) : range
        }
        self = ranges.reduce(.empty) { $0.union($1) }
    }
}

extension RequestSpace {
    /// Where a request, with identd's and the directory's answers, lies in the space.
    func coordinates(_ facts: RequestFacts, ident: IdentOutcome, groups answer: GroupAnswer) -> [UInt128] {
        var values = [UInt128](repeating: 0, count: Dimension.allCases.count)
        func set(_ dimension: Dimension, _ value: Int) { values[dimension.rawValue] = UInt128(value) }
        values[Dimension.client.rawValue] = Self.mapped(facts.client.address)
        set(.command, RequestFacts.Command.allCases.firstIndex(of: facts.command) ?? 0)
        set(.version, RequestFacts.Version.allCases.firstIndex(of: facts.version) ?? 0)
        set(.auth, RequestFacts.AuthMethod.allCases.firstIndex(of: facts.authMethod) ?? 0)
        if case .hostName(let requested) = facts.destination {
            set(.destinationKind, 1)
            let name = requested.lowercased().hasSuffix(".") ? String(requested.lowercased().dropLast()) : requested.lowercased()
            set(.destinationName, nameClass(of: name))
            set(.resolved, facts.resolvedAddress == nil ? 0 : 1)
        }
        if let address = facts.destinationAddress { values[Dimension.destinationAddress.rawValue] = Self.mapped(address) }
        set(.port, Int(facts.destinationPort))
        set(.time, facts.time.map { WeeklyWindow.minuteOfWeek(time: $0, utcOffsetSeconds: 0) } ?? 0)
        let claimed = facts.claimedUser
        set(.user, userClass(of: claimed))
        switch ident {
        case .failure: set(.ident, IdentAnswerKind.fails.rawValue)
        case .userID(let named) where claimed != nil && named == claimed: set(.ident, IdentAnswerKind.claimedName.rawValue)
        case .userID(let named) where claimed != nil && named == identAnswer(IdentAnswerKind.shortName.rawValue, claimed: claimed):
            set(.ident, IdentAnswerKind.shortName.rawValue)
        case .userID: set(.ident, IdentAnswerKind.otherUser.rawValue)
        }
        switch answer {
        case .unavailable: set(.directory, 1)
        case .noSuchUser: break
        case .member(let of): set(.groups, groups.indices.reduce(0) { of.contains(groups[$1]) ? $0 | 1 << $1 : $0 })
        }
        return values
    }

    /// IPv4 as IPv4-mapped IPv6, IPv6 as it is.
    static func mapped(_ address: IPAddress) -> UInt128 {
        switch address.unmapped {
        case .v4(let v4): UInt128(0xFFFF) << 32 | UInt128(v4.value)
        case .v6(let v6): UInt128(v6.high) << 64 | UInt128(v6.low)
        }
    }

    private func nameClass(of name: String) -> Int {
        if let index = names.firstIndex(of: .exactly(name)) { return index }
        var deepest: (index: Int, length: Int)?
        for (index, kind) in names.enumerated() {
            if case .below(let domain) = kind, name.hasSuffix("." + domain), domain.count > deepest?.length ?? -1 {
                deepest = (index, domain.count)
            }
        }
        return deepest?.index ?? 0
    }

    private func userClass(of claimed: String?) -> Int {
        guard let claimed else { return 0 }
        if let index = users.firstIndex(of: claimed) { return index }
        if let at = claimed.lastIndex(of: "@"), let index = users.firstIndex(of: "\(Self.otherUser)\(claimed[at...])") {
            return index
        }
        return 1
    }
}

extension Region {
    /// Whether the region holds these coordinates, leaving out what a request's kind makes
    /// meaningless (a literal address has no name; an unresolved name, no address).
    func contains(_ coordinates: [UInt128]) -> Bool {
        let named = coordinates[Dimension.destinationKind.rawValue] == 1
        let resolved = coordinates[Dimension.resolved.rawValue] == 1
        for dimension in Dimension.allCases {
            if !named, dimension == .destinationName || dimension == .resolved { continue }
            if named, !resolved, dimension == .destinationAddress { continue }
            if !self[dimension].contains(coordinates[dimension.rawValue]) { return false }
        }
        return true
    }
}
