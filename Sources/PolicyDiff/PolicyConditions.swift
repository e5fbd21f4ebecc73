import AccessPolicy
import NetAddress

/// One policy's rules and limits as conditions over the request space, in the engine's
/// terms: a rule holds on a region when the engine would decide every request there by
/// it. Conditions follow the engine's order (a rule's own conditions first, then ident,
/// then groups), so that a region where the engine asked identd or the directory is never
/// mixed with one where it did not.
struct PolicyConditions: Sendable {
    let policy: Policy
    let engine: PolicyEngine
    let rules: [Condition]
    /// Per rule: its own conditions (before ident and groups), where the rule asks identd
    /// or the directory; nil where it asks neither. A rule that asked and then did not
    /// hold still leaves its mark on the decision (the refusal, the groups consulted).
    let asking: [Condition?]
    /// Per limit: holds once the region is settled for it (counted everywhere or nowhere,
    /// and, where the count depends on the user or the groups, by one user and answer).
    let limits: [Condition]

    init(_ policy: Policy, space: RequestSpace) {
        self.policy = policy
        self.engine = PolicyEngine(policy: policy)
        let build = Builder(policy: policy, space: space)
        rules = policy.rules.map(build.rule)
        asking = policy.rules.map { $0.requiresIdent || $0.groups != nil ? build.own($0) : nil }
        limits = policy.limits.map(build.limit)
    }

    private struct Builder {
        let policy: Policy
        let space: RequestSpace

        func rule(_ rule: Rule) -> Condition {
            var parts = [Condition]()
            if rule.requiresIdent { parts.append(ident) }
            if let groups = rule.groups { parts.append(groupCondition(groups, verdict: rule.verdict, ident: rule.requiresIdent)) }
            if rule.verdict == .allow, rule.route != nil {
                // Through parents, UDP may be refused (`Decision.checked`): one command kind per region.
                parts.append(.settled(.within(.command, IntervalSet(values: [index(of: RequestFacts.Command.udp)]))))
            }
            return .sequence([own(rule)] + parts)
        }

        /// Whether a limit counts a request the policy allows is one answer per region:
        /// its own conditions; for `per user`, whether a user is claimed; for a `group`
        /// filter, whether the decision had a verified user to ask the directory about (a
        /// password or GSS-API user, or one identd named: where identd is asked) and
        /// whether the answer would count (unavailable, or a member).
        func limit(_ limit: SessionLimit) -> Condition {
            var parts: [Condition] = []
            if limit.scope == .user {
                parts.append(.uniform([.user]) { $0[.user] == 0 ? 0 : 1 })
            }
            if let groups = limit.conditions.groups {
                let mask = space.groups.indices.reduce(0) { groups.contains(space.groups[$1]) ? $0 | 1 << $1 : $0 }
                parts.append(.settled(identScope))
                parts.append(
                    .uniform([.auth, .user, .ident, .directory, .groups]) { point in
                        let byAuth = point[.auth] != 0 && point[.user] != 0 ? 4 : 0
                        let named = point[.ident] != IdentAnswerKind.fails.rawValue ? 2 : 0
                        let counts = point[.directory] == 1 || point[.groups] & mask != 0 ? 1 : 0
                        return byAuth + named + counts
                    })
            }
            return .guarded(own(limit.conditions, utcOffsetSeconds: 0), then: .all(parts), whereNot: true)
        }

        /// Where the policy asks identd.
        private var identScope: Condition {
            .within(.client, IntervalSet(networks: policy.identScopes.flatMap(\.networks)))
        }

        /// The rule's own conditions, which the engine checks before it asks anyone.
        func own(_ rule: Rule, utcOffsetSeconds: Int? = nil) -> Condition {
            var parts = [Condition]()
            if let commands = rule.commands { parts.append(.within(.command, IntervalSet(values: commands.map(index)))) }
            if let versions = rule.versions { parts.append(.within(.version, IntervalSet(values: versions.map(index)))) }
            if let methods = rule.authMethods { parts.append(.within(.auth, IntervalSet(values: methods.map(index)))) }
            if let sources = rule.sources { parts.append(.within(.client, IntervalSet(networks: sources))) }
            if let destinations = rule.destinations { parts.append(.any(destinations.map(destination))) }
            if let ports = rule.ports {
                parts.append(.within(.port, IntervalSet(union: ports.map { UInt128($0.lowerBound)...UInt128($0.upperBound) })))
            }
            if let users = rule.users {
                let matching = space.users.indices.filter { space.users[$0].map { Self.lists(users, $0) } ?? false }
                parts.append(.within(.user, IntervalSet(values: matching)))
            }
            if let times = rule.times {
                parts.append(.within(.time, Self.utcMinutes(times, offsetSeconds: utcOffsetSeconds ?? policy.utcOffsetSeconds)))
            }
            return .all(parts)
        }

        private func destination(_ pattern: DestinationPattern) -> Condition {
            let literal = Condition.within(.destinationKind, IntervalSet(values: [0]))
            let named = Condition.within(.destinationKind, IntervalSet(values: [1]))
            switch pattern {
            case .network(let network):
                // A literal address, or a name's resolved address.
                return .all([
                    .within(.destinationAddress, IntervalSet(networks: [network])),
                    .any([literal, .within(.resolved, IntervalSet(values: [1]))]),
                ])
            case .hostName, .domainSuffix:
                return .all([named, .within(.destinationName, IntervalSet(values: space.nameClasses(matching: pattern)))])
            }
        }

        /// `ident`: the client is where identd is asked and identd confirms the user; which
        /// refusal an ident failure gives (92 or 93) is one per region.
        private var ident: Condition {
            let scope = identScope
            let dimensions: [Dimension] = [.auth, .user, .ident]
            // Only SOCKS4 clients see which ident refusal it was (92, 93).
            let socks4 = IntervalSet(values: [index(of: RequestFacts.Version.socks4), index(of: RequestFacts.Version.socks4a)])
            return .sequence([
                .settled(.within(.version, socks4)),
                scope,
                .uniform(dimensions) { identResult($0).rawValue },
                .relation(dimensions) { identResult($0) == .confirmed },
            ])
        }

        enum IdentResult: Int {
            case confirmed, mismatch, noAnswer
        }

        /// What the engine's ident check concludes for this user and identd answer.
        private func identResult(_ point: Point) -> IdentResult {
            let facts = space.facts(auth: point[.auth], user: point[.user])
            guard let named = space.identAnswer(point[.ident], claimed: facts.claimedUser) else { return .noAnswer }
            let claimed = policy.localName(facts)
            return claimed == nil || claimed == named ? .confirmed : .mismatch
        }

        /// `group`, as `GroupCheck`: the verified user's groups meet the rule's; where the
        /// directory does not answer, a deny rule holds and an allow rule does not.
        private func groupCondition(_ wanted: Set<String>, verdict: Decision.Verdict, ident: Bool) -> Condition {
            let mask = space.groups.indices.reduce(0) { wanted.contains(space.groups[$1]) ? $0 | 1 << $1 : $0 }
            let dimensions: [Dimension] = ident ? [.auth, .user, .ident, .directory, .groups] : [.auth, .user, .directory, .groups]
            return .relation(dimensions) { [policy, space] point in
                let facts = space.facts(auth: point[.auth], user: point[.user])
                let verified =
                    facts.authMethod != .none
                    ? policy.localName(facts) : (ident ? space.identAnswer(point[.ident], claimed: facts.claimedUser) : nil)
                guard verified != nil else { return false }
                if point[.directory] == 1 { return verdict == .deny }
                return point[.groups] & mask != 0
            }
        }

        /// A user list holds a name, as the engine's `containsUser`: listed, or a
        /// `*@REALM` item names its realm.
        static func lists(_ users: Set<String>, _ user: String) -> Bool {
            if users.contains(user) { return true }
            guard let at = user.lastIndex(of: "@") else { return false }
            return users.contains("*" + user[at...])
        }

        /// Time windows in the policy's zone as minutes of the week in UTC.
        static func utcMinutes(_ windows: [WeeklyWindow], offsetSeconds: Int) -> IntervalSet {
            let week = WeeklyWindow.minutesPerWeek
            let shift = ((offsetSeconds / 60) % week + week) % week
            var ranges: [ClosedRange<UInt128>] = []
            for range in windows.flatMap(\.minuteRanges) {
                // local = UTC + offset, so UTC = local - offset, around the week.
                let low = (range.lowerBound - shift + week) % week
                let high = (range.upperBound - shift + week) % week
                if low <= high {
                    ranges.append(UInt128(low)...UInt128(high))
                } else {
                    ranges.append(UInt128(low)...UInt128(week - 1))
                    ranges.append(0...UInt128(high))
                }
            }
            return IntervalSet(union: ranges)
        }

        private func index<Value: CaseIterable & Equatable>(of value: Value) -> Int {
            Value.allCases.firstIndex(of: value).map { Value.allCases.distance(from: Value.allCases.startIndex, to: $0) } ?? 0
        }
    }
}

extension RequestSpace {
    /// Facts with only the auth method and the claimed user set, for relations.
    func facts(auth: Int, user: Int) -> RequestFacts {
        RequestFacts(
            version: .socks5, command: .connect, client: IPEndpoint(address: .v4(.loopback), port: 1),
            listener: IPEndpoint(address: .v4(.loopback), port: 1), destination: .address(.v4(.loopback)), destinationPort: 1,
            claimedUser: users[user], authMethod: RequestFacts.AuthMethod.allCases[auth])
    }

    /// The user-id identd answers for this kind of answer, nil for no usable answer.
    func identAnswer(_ kind: Int, claimed: String?) -> String? {
        switch IdentAnswerKind(rawValue: kind) ?? .fails {
        case .fails: nil
        case .claimedName: claimed ?? Self.identOther
        case .shortName: claimed.map { name in name.lastIndex(of: "@").map { String(name[..<$0]) } ?? name } ?? Self.identOther
        case .otherUser: Self.identOther
        }
    }
}
