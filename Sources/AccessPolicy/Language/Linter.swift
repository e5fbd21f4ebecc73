import NetAddress

/// Warnings about a policy that parses but probably does not say what its author
/// meant: unreachable and duplicate rules, conditions that can never hold, and open
/// proxies. (Unused sets are found by the parser.)
struct Linter {
    let policy: Policy
    let sources: [RuleSource]
    let file: String

    func warnings() -> [Diagnostic] {
        var warnings: [Diagnostic] = []
        func warn(_ index: Int, _ clause: String, _ message: String) {
            let source = sources[index]
            warnings.append(
                Diagnostic(
                    .warning, file: file, line: source.rule.reference.line ?? 0,
                    column: source.columns[clause] ?? source.columns["verdict"] ?? 1, message: message, lineText: source.lineText))
        }
        for (index, source) in sources.enumerated() {
            let rule = source.rule
            if let never = neverTrue(rule) {
                warn(index, never.clause, "this rule can never match: \(never.reason)")
                continue
            }
            if let earlier = sources[..<index].firstIndex(where: { Self.sameConditions($0.rule, rule) }) {
                warn(index, "verdict", "duplicate of the rule on line \(sources[earlier].rule.reference.line ?? 0)")
                continue
            }
            if let earlier = sources[..<index].firstIndex(where: { Self.covers($0.rule, rule) }) {
                warn(index, "verdict", "never reached: the rule on line \(sources[earlier].rule.reference.line ?? 0) matches every request this one does")
                continue
            }
            if rule.verdict == .allow, isOpenProxy(rule) {
                warn(
                    index, "verdict",
                    "open proxy: this allows any client to reach any destination; name the clients with 'from' or require a user")
            }
        }
        return warnings
    }

    /// A condition that no request can satisfy, with the clause to point at.
    private func neverTrue(_ rule: Rule) -> (clause: String, reason: String)? {
        if let versions = rule.versions, versions.isSubset(of: [.socks4, .socks4a]) {
            if rule.authMethods == [.password] {
                return ("auth", "SOCKS4 has no password authentication")
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
        if rule.requiresIdent {
            let clients = rule.sources ?? [IPNetwork("0.0.0.0/0")!, IPNetwork("::/0")!]
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
        return anySource && rule.destinations == nil && rule.users == nil && !rule.requiresIdent
            && rule.authMethods.map { !$0.contains(.none) } != true
    }

    static func sameConditions(_ a: Rule, _ b: Rule) -> Bool {
        a.commands == b.commands && a.sources.map(Set.init) == b.sources.map(Set.init)
            && a.destinations.map(Set.init) == b.destinations.map(Set.init) && a.ports.map(Set.init) == b.ports.map(Set.init)
            && a.users == b.users && a.versions == b.versions && a.authMethods == b.authMethods
            && a.times.map(Set.init) == b.times.map(Set.init) && a.requiresIdent == b.requiresIdent
    }

    /// True if every request `later` matches, `earlier` matches too (so `later` is never
    /// reached). Conservative: false when unsure.
    static func covers(_ earlier: Rule, _ later: Rule) -> Bool {
        func superset<T>(_ outer: Set<T>?, _ inner: Set<T>?) -> Bool {
            guard let outer else { return true }
            guard let inner else { return false }
            return inner.isSubset(of: outer)
        }
        guard superset(earlier.commands, later.commands), superset(earlier.versions, later.versions),
            superset(earlier.authMethods, later.authMethods), superset(earlier.users, later.users),
            !earlier.requiresIdent || later.requiresIdent
        else { return false }
        if let outer = earlier.times {
            guard let inner = later.times, Set(inner).isSubset(of: Set(outer)) else { return false }
        }
        if let outer = earlier.sources {
            guard let inner = later.sources, inner.allSatisfy({ network in outer.contains { inside(network, $0) } }) else { return false }
        }
        if let outer = earlier.ports {
            guard let inner = later.ports, inner.allSatisfy({ range in outer.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound } })
            else { return false }
        }
        if let outer = earlier.destinations {
            guard let inner = later.destinations, inner.allSatisfy({ pattern in outer.contains { covers($0, pattern) } }) else { return false }
        }
        return true
    }

    private static func covers(_ outer: DestinationPattern, _ inner: DestinationPattern) -> Bool {
        switch (outer, inner) {
        case (.network(let a), .network(let b)): inside(b, a)
        case (.hostName(let a), .hostName(let b)): a == b
        case (.domainSuffix(let a), .hostName(let b)), (.domainSuffix(let a), .domainSuffix(let b)): b == a || b.hasSuffix("." + a)
        default: false
        }
    }

    /// `inner` lies wholly inside `outer`.
    private static func inside(_ inner: IPNetwork, _ outer: IPNetwork) -> Bool {
        outer.prefixLength <= inner.prefixLength && outer.contains(inner.address)
    }

    private static func overlap(_ a: IPNetwork, _ b: IPNetwork) -> Bool {
        inside(a, b) || inside(b, a)
    }
}
