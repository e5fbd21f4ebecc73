import NetAddress

/// The compiled form of a policy's conditions, in the manner of packet classifiers:
/// for every dimension (command, version, auth, source, destination, port, user,
/// time) a lookup gives the set of rules whose condition on that dimension holds, as
/// a bit set over rule positions. The rules that match a request are the AND of those
/// sets, and the first match is its lowest bit. A lookup is a binary search in an
/// interval table or a hash probe, so the cost grows with log(rules) and the bit-set
/// width, not with a rule-by-rule scan.
///
/// `ident` is not a dimension: the engine checks it on the candidates in order.
struct RuleMatcher: Sendable {
    private let ruleCount: Int
    private let commands: [RequestFacts.Command: RuleSet]
    private let versions: [RequestFacts.Version: RuleSet]
    private let authMethods: [RequestFacts.AuthMethod: RuleSet]
    private let sourceV4: IntervalTable<UInt32>
    private let sourceV6: IntervalTable<UInt128>
    private let destinationV4: IntervalTable<UInt32>
    private let destinationV6: IntervalTable<UInt128>
    /// Rules with no destination condition: the destination dimension's "any".
    private let anyDestination: RuleSet
    private let exactNames: [String: RuleSet]
    private let suffixNames: [String: RuleSet]
    private let ports: IntervalTable<UInt32>
    private let users: [String: RuleSet]
    private let anyUser: RuleSet
    private let times: IntervalTable<UInt32>
    private let anyTime: RuleSet
    private let utcOffsetSeconds: Int

    init(policy: Policy) {
        let rules = policy.rules
        ruleCount = rules.count
        utcOffsetSeconds = policy.utcOffsetSeconds
        let width = rules.count

        func sets<Value: Hashable>(_ values: [Value], _ condition: (Rule) -> Set<Value>?) -> [Value: RuleSet] {
            Dictionary(
                uniqueKeysWithValues: values.map { value in
                    (value, RuleSet(width: width, rules.indices.filter { condition(rules[$0])?.contains(value) ?? true }))
                })
        }
        commands = sets(RequestFacts.Command.allCases) { $0.commands }
        versions = sets(RequestFacts.Version.allCases) { $0.versions }
        authMethods = sets(RequestFacts.AuthMethod.allCases) { $0.authMethods }

        func v4Ranges(_ networks: [IPNetwork]) -> [ClosedRange<UInt32>] {
            networks.compactMap { network in
                guard case .v4(let address) = network.address else { return nil }
                let hostBits = UInt32(32 - network.prefixLength)
                let span: UInt32 = hostBits == 32 ? .max : (1 << hostBits) - 1
                return address.value...(address.value | span)
            }
        }
        func v6Ranges(_ networks: [IPNetwork]) -> [ClosedRange<UInt128>] {
            networks.compactMap { network in
                guard case .v6(let address) = network.address else { return nil }
                let low = UInt128(address.high) << 64 | UInt128(address.low)
                let hostBits = 128 - network.prefixLength
                let span: UInt128 = hostBits == 128 ? .max : (1 << UInt128(hostBits)) - 1
                return low...(low | span)
            }
        }
        sourceV4 = IntervalTable(width: width, rules.map { $0.sources.map(v4Ranges) })
        sourceV6 = IntervalTable(width: width, rules.map { $0.sources.map(v6Ranges) })

        let destinationNetworks: [[IPNetwork]?] = rules.map { rule in
            rule.destinations.map { $0.compactMap { if case .network(let network) = $0 { network } else { nil } } }
        }
        destinationV4 = IntervalTable(width: width, destinationNetworks.map { $0.map(v4Ranges) })
        destinationV6 = IntervalTable(width: width, destinationNetworks.map { $0.map(v6Ranges) })
        anyDestination = RuleSet(width: width, rules.indices.filter { rules[$0].destinations == nil })
        var exact: [String: [Int]] = [:]
        var suffix: [String: [Int]] = [:]
        for (index, rule) in rules.enumerated() {
            for pattern in rule.destinations ?? [] {
                switch pattern {
                case .hostName(let name): exact[name, default: []].append(index)
                case .domainSuffix(let domain): suffix[domain, default: []].append(index)
                case .network: break
                }
            }
        }
        exactNames = exact.mapValues { RuleSet(width: width, $0) }
        suffixNames = suffix.mapValues { RuleSet(width: width, $0) }

        ports = IntervalTable(width: width, rules.map { $0.ports?.map { UInt32($0.lowerBound)...UInt32($0.upperBound) } })

        var userRules: [String: [Int]] = [:]
        for (index, rule) in rules.enumerated() {
            for user in rule.users ?? [] { userRules[user, default: []].append(index) }
        }
        let rulesForAnyUser = RuleSet(width: width, rules.indices.filter { rules[$0].users == nil })
        anyUser = rulesForAnyUser
        users = userRules.mapValues { RuleSet(width: width, $0).union(rulesForAnyUser) }

        times = IntervalTable(
            width: width,
            rules.map { rule in rule.times.map { $0.flatMap(\.minuteRanges).map { UInt32($0.lowerBound)...UInt32($0.upperBound) } } })
        anyTime = RuleSet(width: width, rules.indices.filter { rules[$0].times == nil })
    }

    /// The rules whose every condition but `ident` holds, in policy order.
    func candidates(for facts: RequestFacts) -> Candidates {
        var destination: RuleSet
        switch facts.destinationAddress?.unmapped {
        case .v4(let address)?: destination = destinationV4.lookup(address.value)
        case .v6(let address)?: destination = destinationV6.lookup(UInt128(address.high) << 64 | UInt128(address.low))
        case nil: destination = anyDestination
        }
        if case .hostName(let requested) = facts.destination {
            let name = HostName.normalized(requested)
            if let rules = exactNames[name] { destination = destination.union(rules) }
            if !suffixNames.isEmpty {
                var domain = Substring(name)
                while true {
                    if let rules = suffixNames[String(domain)] { destination = destination.union(rules) }
                    guard let dot = domain.firstIndex(of: ".") else { break }
                    domain = domain[domain.index(after: dot)...]
                }
            }
        }
        let source: RuleSet
        switch facts.client.address.unmapped {
        case .v4(let address): source = sourceV4.lookup(address.value)
        case .v6(let address): source = sourceV6.lookup(UInt128(address.high) << 64 | UInt128(address.low))
        }
        let time: RuleSet
        if let when = facts.time {
            time = times.lookup(UInt32(WeeklyWindow.minuteOfWeek(time: when, utcOffsetSeconds: utcOffsetSeconds)))
        } else {
            time = anyTime
        }
        return Candidates(sets: [
            commands[facts.command]!, versions[facts.version]!, authMethods[facts.authMethod]!,
            source, destination, ports.lookup(UInt32(facts.destinationPort)),
            facts.claimedUser.flatMap { users[$0] } ?? anyUser, time,
        ])
    }

    /// Iterates the AND of the dimension sets, lowest rule first, one word at a time.
    struct Candidates {
        let sets: [RuleSet]
        private var word = 0
        private var pending: UInt64 = 0

        init(sets: [RuleSet]) {
            self.sets = sets
            pending = Self.and(sets, word: 0)
        }

        mutating func next() -> Int? {
            let words = sets[0].words.count
            while pending == 0 {
                word += 1
                guard word < words else { return nil }
                pending = Self.and(sets, word: word)
            }
            let bit = pending.trailingZeroBitCount
            pending &= pending - 1
            return word * 64 + bit
        }

        private static func and(_ sets: [RuleSet], word: Int) -> UInt64 {
            guard word < sets[0].words.count else { return 0 }
            var result = UInt64.max
            for set in sets {
                result &= set.words[word]
                if result == 0 { break }
            }
            return result
        }
    }
}

/// A set of rule positions as a fixed-width bit set.
struct RuleSet: Hashable, Sendable {
    var words: [UInt64]

    init(width: Int, _ members: some Sequence<Int> = [Int]()) {
        words = [UInt64](repeating: 0, count: max(1, (width + 63) / 64))
        for member in members { insert(member) }
    }

    mutating func insert(_ member: Int) {
        words[member / 64] |= 1 << UInt64(member % 64)
    }

    mutating func remove(_ member: Int) {
        words[member / 64] &= ~(1 << UInt64(member % 64))
    }

    func union(_ other: RuleSet) -> RuleSet {
        var result = self
        for index in words.indices { result.words[index] |= other.words[index] }
        return result
    }
}

/// Maps every point of a number line (addresses, ports, minutes of the week) to the
/// rules whose ranges hold it. Built by a sweep over the range ends; equal sets are
/// stored once, so a table costs one set per distinct region, not per rule.
struct IntervalTable<Key: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// Start of each region, ascending; the first is 0.
    private let starts: [Key]
    /// Index into `sets` for each region.
    private let regionSets: [Int32]
    private let sets: [RuleSet]

    /// `ranges[i]`: rule i's ranges on this dimension, or nil for "any".
    init(width: Int, _ ranges: [[ClosedRange<Key>]?]) {
        var anyRules = RuleSet(width: width)
        var events: [(at: Key, rule: Int, delta: Int)] = []
        var boundaries: Set<Key> = [0]
        for (rule, ruleRanges) in ranges.enumerated() {
            guard let ruleRanges else {
                anyRules.insert(rule)
                continue
            }
            for range in ruleRanges {
                events.append((range.lowerBound, rule, 1))
                boundaries.insert(range.lowerBound)
                if range.upperBound < Key.max {
                    events.append((range.upperBound + 1, rule, -1))
                    boundaries.insert(range.upperBound + 1)
                }
            }
        }
        events.sort { $0.at < $1.at }
        var active = [Int](repeating: 0, count: width)
        var current = anyRules
        var unique: [RuleSet: Int32] = [:]
        var sets: [RuleSet] = []
        var starts: [Key] = []
        var regionSets: [Int32] = []
        var next = 0
        for start in boundaries.sorted() {
            while next < events.count, events[next].at == start {
                let event = events[next]
                active[event.rule] += event.delta
                if active[event.rule] > 0 { current.insert(event.rule) } else if ranges[event.rule] != nil { current.remove(event.rule) }
                next += 1
            }
            let id: Int32
            if let known = unique[current] {
                id = known
            } else {
                id = Int32(sets.count)
                unique[current] = id
                sets.append(current)
            }
            if regionSets.last != id {
                starts.append(start)
                regionSets.append(id)
            }
        }
        self.starts = starts
        self.regionSets = regionSets
        self.sets = sets
    }

    func lookup(_ key: Key) -> RuleSet {
        // The last region whose start is at or before the key.
        var low = 0
        var high = starts.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= key { low = middle } else { high = middle - 1 }
        }
        return sets[Int(regionSets[low])]
    }
}
