import AccessPolicy
import NetAddress

/// One policy's rules and limits as conditions over the request space, in the engine's
/// terms: a rule holds on a region when the engine would decide every request there by
/// it. Conditions follow the engine's order (a rule's own conditions first, then ident,
/// then groups), so that a region where the engine asked identd or the directory is never
/// mixed with one where it did not.
final class PolicyConditions: Sendable {
    let policy: Policy
    let engine: PolicyEngine
    let rules: [Condition]
    /// Per rule: its own conditions (before ident and groups), where the rule asks identd
    /// or the directory; nil where it asks neither. A rule that asked and then did not
    /// hold still leaves its mark on the decision (the refusal, the groups consulted).
    let asking: [Condition?]
    /// Per rule: its plain conditions (one dimension's values each), checked before the
    /// whole condition: most rules are ruled out by one of them, without walking the tree.
    let prefilters: [[(dimension: Int, set: IntervalSet)]]
    /// Allow rules by their clients: source ranges sorted by their start, each with the
    /// highest end so far; and the allow rules with no `from`. Finds the few allow rules a
    /// region with a narrow client set could meet, among thousands.
    private let allowSources: [(low: UInt128, high: UInt128, rule: Int)]
    private let allowHighestEnd: [UInt128]
    private let allowAnywhere: [Int]
    /// Per limit: holds once the region is settled for it (counted everywhere or nowhere,
    /// and, where the count depends on the user or the groups, by one user and answer).
    let limits: [Condition]

    let space: RequestSpace

    init(_ policy: Policy, space: RequestSpace) {
        self.policy = policy
        self.space = space
        self.engine = PolicyEngine(policy: policy)
        let build = Builder(policy: policy, space: space)
        rules = policy.rules.map(build.rule)
        asking = policy.rules.map { $0.requiresIdent || $0.groups != nil ? build.own($0) : nil }
        var sources: [(low: UInt128, high: UInt128, rule: Int)] = []
        var anywhere: [Int] = []
        for (index, rule) in policy.rules.enumerated() where rule.verdict == .allow {
            guard let networks = rule.sources else {
                anywhere.append(index)
                continue
            }
            sources += IntervalSet(networks: networks).ranges.map { ($0.lowerBound, $0.upperBound, index) }
        }
        sources.sort { $0.low < $1.low }
        allowSources = sources
        var highest: UInt128 = 0
        allowHighestEnd = sources.map { entry in
            highest = max(highest, entry.high)
            return highest
        }
        allowAnywhere = anywhere
        prefilters = policy.rules.map { rule in
            guard case .all(let parts) = build.own(rule) else { return [] }
            var filters: [(dimension: Int, set: IntervalSet)] = parts.compactMap { part in
                if case .within(let dimension, let set) = part { (dimension.rawValue, set) } else { nil }
            }
            // Destinations only by name, or only by network: the region must meet those.
            let patterns = rule.destinations ?? []
            let networks = patterns.compactMap { pattern -> IPNetwork? in if case .network(let network) = pattern { network } else { nil } }
            if !patterns.isEmpty, networks.isEmpty {
                filters.append((Dimension.destinationKind.rawValue, IntervalSet(values: [1])))
                filters.append((Dimension.destinationName.rawValue, IntervalSet(values: patterns.flatMap(space.nameClasses))))
            } else if !patterns.isEmpty, networks.count == patterns.count {
                filters.append((Dimension.destinationAddress.rawValue, IntervalSet(networks: networks)))
            }
            return filters
        }
        limits = policy.limits.map(build.limit)
    }

    /// The allow rules from `start` on whose clients meet the region's, in order; nil when
    /// the region's clients are too many ranges to look up (then every rule is a candidate).
    func allowCandidates(in region: Region, from start: Int) -> [Int]? {
        let clients = region[.client].ranges
        guard clients.count <= 8 else { return nil }
        var found = Set(allowAnywhere.filter { $0 >= start })
        for range in clients {
            // The last source starting at or before the range's end, then back while some
            // source before could still reach the range's start.
            var low = 0
            var high = allowSources.count
            while low < high {
                let middle = (low + high) / 2
                if allowSources[middle].low <= range.upperBound { low = middle + 1 } else { high = middle }
            }
            var index = low - 1
            while index >= 0, allowHighestEnd[index] >= range.lowerBound {
                let source = allowSources[index]
                if source.high >= range.lowerBound, source.rule >= start { found.insert(source.rule) }
                index -= 1
            }
        }
        return found.sorted()
    }

    /// The boxes of the request space where the rule's own conditions can hold (one per
    /// destination pattern: a network's literal addresses and names resolved into it are
    /// two). A superset is fine; a box too few is not.
    func reach(of rule: Rule) -> [Region] {
        let build = Builder(policy: policy, space: space)
        var box = space.everything
        if case .all(let parts) = build.own(rule) {
            for part in parts {
                if case .within(let dimension, let set) = part { box[dimension] = box[dimension].intersection(set) }
            }
        }
        guard let patterns = rule.destinations else { return [box] }
        var boxes: [Region] = []
        for pattern in patterns {
            var named = box
            named[.destinationKind] = IntervalSet(values: [1])
            switch pattern {
            case .network(let network):
                var literal = box
                literal[.destinationKind] = IntervalSet(values: [0])
                literal[.destinationAddress] = IntervalSet(networks: [network])
                named[.resolved] = IntervalSet(values: [1])
                named[.destinationAddress] = IntervalSet(networks: [network])
                boxes += [literal, named]
            case .hostName, .domainSuffix:
                named[.destinationName] = IntervalSet(values: space.nameClasses(matching: pattern))
                boxes.append(named)
            }
        }
        return boxes
    }

    /// True when a plain condition of the rule holds nowhere in the region.
    func ruledOut(_ index: Int, in region: Region) -> Bool {
        region.sets.withUnsafeBufferPointer { sets in
            prefilters[index].withUnsafeBufferPointer { filters in
                for filter in filters where sets[filter.dimension].isDisjoint(with: filter.set) { return true }
                return false
            }
        }
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
