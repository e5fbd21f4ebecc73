import NetAddress

/// Warnings about a policy that parses but probably does not say what its author
/// meant: unreachable and duplicate rules, conditions that can never hold, and open
/// proxies. (Unused sets are found by the parser.)
struct Linter {
    let policy: Policy
    let sources: [RuleSource]
    var limitSources: [LimitSource] = []
    let file: String

    func warnings() -> [Diagnostic] {
        var warnings: [Diagnostic] = []
        func warn(_ index: Int, _ clause: String, _ message: String) {
            let source = sources[index]
            warnings.append(
                Diagnostic(
                    .warning, file: file, line: source.rule.reference.line ?? 0,
                    column: source.columns[clause] ?? source.columns["verdict"] ?? 1, message: message, lineText: source.lineText)
            )
        }
        let shapes = policy.rules.map(Shape.init)
        var firstWithConditions: [Shape: Int] = [:]
        for (index, source) in sources.enumerated() {
            let rule = source.rule
            if let never = neverTrue(rule) {
                warn(index, never.clause, "this rule can never match: \(never.reason)")
                continue
            }
            if let earlier = firstWithConditions[shapes[index]] {
                warn(index, "verdict", "duplicate of the rule on line \(policy.rules[earlier].reference.line ?? 0)")
                continue
            }
            firstWithConditions[shapes[index]] = index
            // Pairwise, but on compact shapes with cheap checks first: about 10 ns a
            // pair, so 10,000 rules lint in well under a second.
            let coveringRule = shapes.withUnsafeBufferPointer { shapes in
                (0..<index).first { shapes[$0].covers(shapes[index]) }
            }
            if let earlier = coveringRule {
                warn(
                    index, "verdict",
                    "never reached: the rule on line \(policy.rules[earlier].reference.line ?? 0) matches every request this one does"
                )
                continue
            }
            if rule.verdict == .allow, isOpenProxy(rule) {
                warn(
                    index, "verdict",
                    "open proxy: this allows any client to reach any destination; name the clients with 'from' or require a user")
            }
        }
        return warnings + limitWarnings()
    }

    /// Limits that can never be reached: another limit counting every session this one
    /// does is always reached first, no user is ever claimed for a per-user limit, or no
    /// allow rule admits a session it counts.
    private func limitWarnings() -> [Diagnostic] {
        var warnings: [Diagnostic] = []
        let shapes = limitSources.map { Shape($0.limit.conditions) }
        let allowShapes = policy.rules.filter { $0.verdict == .allow }.map(Shape.init)
        for (index, source) in limitSources.enumerated() {
            let limit = source.limit
            func warn(_ clause: String, _ message: String) {
                warnings.append(
                    Diagnostic(
                        .warning, file: file, line: limit.reference.line ?? 0,
                        column: source.columns[clause] ?? source.columns["verdict"] ?? 1,
                        message: "this limit can never be reached: " + message, lineText: source.lineText))
            }
            let conditions = limit.conditions
            if limit.scope == .user,
                conditions.versions.map({ $0.isSubset(of: [.socks5]) }) == true, conditions.authMethods == [.none]
            {
                warn("scope", "a SOCKS5 request without a password claims no user, and a per-user limit counts only users")
                continue
            }
            if let tighter = limitSources.indices.first(where: { other in
                other != index && shapes[other].covers(shapes[index])
                    && Self.isReachedFirst(limitSources[other].limit, before: limit, earlier: other < index)
            }) {
                let other = limitSources[tighter].limit
                warn(
                    "measure",
                    "the limit on line \(other.reference.line ?? 0) (\(other.description)) counts every session this one does "
                        + "and is reached first")
                continue
            }
            // A UDP association is counted when it starts, before any rule decides.
            let countsUDP = conditions.commands?.contains(.udp) ?? true
            if !countsUDP, !allowShapes.contains(where: { $0.overlaps(shapes[index]) }) {
                warn("verdict", "no allow rule admits a session it counts")
                continue
            }
            if limit.scope == .user, let line = claimedNameRule(reaching: conditions) {
                warnings.append(
                    Diagnostic(
                        .warning, file: file, line: limit.reference.line ?? 0,
                        column: source.columns["scope"] ?? source.columns["verdict"] ?? 1,
                        message: "names that are only claimed reach this per-user limit: the rule on line \(line) allows SOCKS4 "
                            + "requests without a password, GSS-API or identd, and their names are counted per client, not per "
                            + "user; require 'ident' in that rule, or count only 'auth password' here",
                        lineText: source.lineText))
            }
        }
        return warnings
    }

    /// The line of the first allow rule that admits, among the requests a per-user limit
    /// with these conditions counts, one whose user is only claimed: SOCKS4/4a without a
    /// password and with no `ident` (SOCKS5 names a user only with a password or GSS-API).
    private func claimedNameRule(reaching conditions: Rule) -> Int? {
        var claimed = conditions
        claimed.authMethods = (conditions.authMethods ?? Set(RequestFacts.AuthMethod.allCases)).intersection([.none])
        claimed.versions = (conditions.versions ?? Set(RequestFacts.Version.allCases)).intersection([.socks4, .socks4a])
        let shape = Shape(claimed)
        let rule = policy.rules.first { $0.verdict == .allow && !$0.requiresIdent && Shape($0).overlaps(shape) }
        return rule.map { $0.reference.line ?? 0 }
    }

    /// `first` is reached whenever `second` would be, for sessions both count: a limit of
    /// the same measure, no larger, counting the same subjects or everyone. Of two equal
    /// limits, the earlier one is said to be reached first.
    private static func isReachedFirst(_ first: SessionLimit, before second: SessionLimit, earlier: Bool) -> Bool {
        guard first.scope == second.scope || first.scope == .total else { return false }
        switch (first.measure, second.measure) {
        case (.sessions(let a), .sessions(let b)):
            return a < b || (a == b && earlier)
        case (.rate(let a, let aSeconds), .rate(let b, let bSeconds)):
            // No larger burst, and no faster refill.
            let noLooser = a <= b && a * bSeconds <= b * aSeconds
            return noLooser && (a != b || aSeconds != bSeconds || earlier)
        default:
            return false
        }
    }

    /// A condition that no request can satisfy, with the clause to point at.
    private func neverTrue(_ rule: Rule) -> (clause: String, reason: String)? {
        if let versions = rule.versions, versions.isSubset(of: [.socks4, .socks4a]) {
            if let methods = rule.authMethods, !methods.contains(.none) {
                return ("auth", "SOCKS4 has no password or GSS-API authentication")
            }
            if versions == [.socks4], let destinations = rule.destinations,
                destinations.allSatisfy({ if case .network(let network) = $0 { network.address.isIPv6 } else { false } })
            {
                return ("to", "a SOCKS4 request cannot name an IPv6 destination")
            }
            if rule.commands == [.udp] {
                return ("command", "SOCKS4 has no UDP")
            }
        }
        if rule.users != nil, rule.versions == [.socks5], rule.authMethods == [.none] {
            return ("user", "a SOCKS5 request without a password claims no user")
        }
        if rule.groups != nil, rule.authMethods == [.none], !rule.requiresIdent {
            return ("group", "no verified user reaches it: a name that is only claimed has no groups; "
                + "require 'ident', or 'auth password' or 'auth gssapi'")
        }
        if rule.requiresIdent {
            let clients = rule.sources ?? IPNetwork.everything
            let asked = clients.contains { client in
                policy.identScopes.contains { scope in scope.networks.contains { Self.overlap($0, client) } }
            }
            if !asked {
                return ("ident", "identd is never asked for these clients; add 'ident from …' for their network")
            }
        }
        return nil
    }

    private func isOpenProxy(_ rule: Rule) -> Bool {
        let anySource = rule.sources.map { $0.contains { $0.prefixLength == 0 } } ?? true
        return anySource && rule.destinations == nil && rule.users == nil && !rule.requiresIdent && rule.groups == nil
            && rule.authMethods.map { !$0.contains(.none) } != true
    }

    private static func overlap(_ a: IPNetwork, _ b: IPNetwork) -> Bool {
        let (a, b) = (a.mappedRange, b.mappedRange)
        return a.lowerBound <= b.upperBound && b.lowerBound <= a.upperBound
    }
}

/// A rule's conditions in a form that compares cheaply: small sets as bit masks,
/// networks as ranges in one 128-bit space (IPv4 as IPv4-mapped IPv6), sorted lists.
/// Two rules with equal shapes match exactly the same requests.
private struct Shape: Hashable {
    var commands: UInt8
    var versions: UInt8
    var authMethods: UInt8
    var requiresIdent: Bool
    var sources: [ClosedRange<UInt128>]
    var ports: [ClosedRange<UInt16>]
    /// nil: any destination.
    var destinationNetworks: [ClosedRange<UInt128>]?
    var destinationNames: [String]
    var destinationSuffixes: [String]
    var users: [String]?
    var times: [ClosedRange<Int>]?
    var hasGroups: Bool

    init(_ rule: Rule) {
        hasGroups = rule.groups != nil
        commands = rule.commands.bitMask()
        versions = rule.versions.bitMask()
        authMethods = rule.authMethods.bitMask()
        requiresIdent = rule.requiresIdent
        sources = (rule.sources?.map(\.mappedRange) ?? [0...UInt128.max]).sorted { $0.lowerBound < $1.lowerBound }
        ports = (rule.ports ?? [0...UInt16.max]).sorted { $0.lowerBound < $1.lowerBound }
        var networks: [ClosedRange<UInt128>] = []
        var names: [String] = []
        var suffixes: [String] = []
        for pattern in rule.destinations ?? [] {
            switch pattern {
            case .network(let network): networks.append(network.mappedRange)
            case .hostName(let name): names.append(name)
            case .domainSuffix(let domain): suffixes.append(domain)
            }
        }
        destinationNetworks = rule.destinations == nil ? nil : networks.sorted { $0.lowerBound < $1.lowerBound }
        destinationNames = names.sorted()
        destinationSuffixes = suffixes.sorted()
        users = rule.users?.sorted()
        times = rule.times?.flatMap(\.minuteRanges).sorted { $0.lowerBound < $1.lowerBound }
    }

    /// Every request `later` matches, `self` matches too. Conservative: false when unsure.
    func covers(_ later: Shape) -> Bool {
        // A rule with `group` may not match (another group, the directory down for an
        // allow rule): it never hides a later one.
        guard !hasGroups, later.commands & ~commands == 0, later.versions & ~versions == 0,
            later.authMethods & ~authMethods == 0, !requiresIdent || later.requiresIdent,
            Self.inside(later.sources, sources), Self.inside(later.ports, ports)
        else { return false }
        if let users {
            guard let inner = later.users, inner.allSatisfy(users.contains) else { return false }
        }
        if let times {
            guard let inner = later.times, Self.inside(inner, times) else { return false }
        }
        guard let outerNetworks = destinationNetworks else { return true }
        guard let innerNetworks = later.destinationNetworks, Self.inside(innerNetworks, outerNetworks) else { return false }
        let names = later.destinationNames.allSatisfy { name in
            destinationNames.contains(name) || destinationSuffixes.contains { name == $0 || name.hasSuffix("." + $0) }
        }
        return names
            && later.destinationSuffixes.allSatisfy { suffix in
                destinationSuffixes.contains { suffix == $0 || suffix.hasSuffix("." + $0) }
            }
    }

    /// Some request matches both (on the conditions limits have: commands, versions,
    /// auth, clients and users).
    func overlaps(_ other: Shape) -> Bool {
        guard commands & other.commands != 0, versions & other.versions != 0, authMethods & other.authMethods != 0,
            sources.contains(where: { a in other.sources.contains { b in a.lowerBound <= b.upperBound && b.lowerBound <= a.upperBound } })
        else { return false }
        if let users, let otherUsers = other.users { return users.contains(where: otherUsers.contains) }
        return true
    }

    /// Each inner range lies within one outer range.
    private static func inside<T>(_ inner: [ClosedRange<T>], _ outer: [ClosedRange<T>]) -> Bool {
        inner.allSatisfy { range in outer.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound } }
    }
}
