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
    /// Every distinct rule set of every table, stored once, side by side; tables hold
    /// `SetRef`s into it. One buffer means no reference counting per set on the hot path.
    private let pool: RuleSetPool.Storage
    /// Indexed by the value's position in `allCases`.
    private let commands: [SetRef]
    private let versions: [SetRef]
    private let authMethods: [SetRef]
    private let sourceV4: IntervalTable<UInt32>
    private let sourceV6: IntervalTable<UInt128>
    private let destinationV4: IntervalTable<UInt32>
    private let destinationV6: IntervalTable<UInt128>
    /// Rules with no destination condition: the destination dimension's "any".
    private let anyDestination: SetRef
    /// Keyed by substrings so that probing the domains of a name allocates nothing.
    private let exactNames: [Substring: (set: SetRef, list: [Int32])]
    private let suffixNames: [Substring: (set: SetRef, list: [Int32])]
    /// Rules with neither a source nor a destination condition, ascending.
    private let neitherSourceNorDestination: [Int32]
    /// Up to this many rules without source and destination, candidates are gathered
    /// from the sparse lists and checked one by one; beyond it, bit sets are scanned.
    static let sparseLimit = 64
    private let ports: IntervalTable<UInt32>
    private let users: [String: SetRef]
    private let anyUser: SetRef
    private let times: IntervalTable<UInt32>
    private let anyTime: SetRef
    private let utcOffsetSeconds: Int

    init(policy: Policy) {
        let rules = policy.rules
        ruleCount = rules.count
        utcOffsetSeconds = policy.utcOffsetSeconds
        let width = rules.count
        var pool = RuleSetPool(width: width)

        func sets<Value: Hashable>(_ values: [Value], _ condition: (Rule) -> Set<Value>?) -> [SetRef] {
            values.map { value in
                pool.intern(RuleSet(width: width, rules.indices.filter { condition(rules[$0])?.contains(value) ?? true }))
            }
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
        sourceV4 = IntervalTable(pool: &pool, rules.map { $0.sources.map(v4Ranges) })
        sourceV6 = IntervalTable(pool: &pool, rules.map { $0.sources.map(v6Ranges) })

        let destinationNetworks: [[IPNetwork]?] = rules.map { rule in
            rule.destinations.map { $0.compactMap { if case .network(let network) = $0 { network } else { nil } } }
        }
        destinationV4 = IntervalTable(pool: &pool, destinationNetworks.map { $0.map(v4Ranges) })
        destinationV6 = IntervalTable(pool: &pool, destinationNetworks.map { $0.map(v6Ranges) })
        anyDestination = pool.intern(RuleSet(width: width, rules.indices.filter { rules[$0].destinations == nil }))
        var exact: [Substring: [Int]] = [:]
        var suffix: [Substring: [Int]] = [:]
        for (index, rule) in rules.enumerated() {
            for pattern in rule.destinations ?? [] {
                switch pattern {
                case .hostName(let name): exact[Substring(name), default: []].append(index)
                case .domainSuffix(let domain): suffix[Substring(domain), default: []].append(index)
                case .network: break
                }
            }
        }
        exactNames = exact.mapValues { (pool.intern(RuleSet(width: width, $0)), $0.map(Int32.init)) }
        suffixNames = suffix.mapValues { (pool.intern(RuleSet(width: width, $0)), $0.map(Int32.init)) }
        neitherSourceNorDestination = rules.indices.filter { rules[$0].sources == nil && rules[$0].destinations == nil }.map(
            Int32.init)

        ports = IntervalTable(pool: &pool, rules.map { $0.ports?.map { UInt32($0.lowerBound)...UInt32($0.upperBound) } })

        var userRules: [String: [Int]] = [:]
        for (index, rule) in rules.enumerated() {
            for user in rule.users ?? [] { userRules[user, default: []].append(index) }
        }
        let rulesForAnyUser = RuleSet(width: width, rules.indices.filter { rules[$0].users == nil })
        anyUser = pool.intern(rulesForAnyUser)
        users = userRules.mapValues { pool.intern(RuleSet(width: width, $0).union(rulesForAnyUser)) }

        times = IntervalTable(
            pool: &pool,
            rules.map { rule in
                rule.times.map { $0.flatMap(\.minuteRanges).map { UInt32($0.lowerBound)...UInt32($0.upperBound) } }
            })
        anyTime = pool.intern(RuleSet(width: width, rules.indices.filter { rules[$0].times == nil }))
        self.pool = pool.storage
    }

    /// The rules whose every condition but `ident` holds, in policy order.
    func candidates(for facts: RequestFacts) -> Candidates {
        // The destination dimension is a union: rules matching the address, plus rules
        // naming the host or a domain above it. The parts are OR-ed word by word.
        var destination: [SetRef] = []
        // Every rule that can match names the client's network (`sourceOwn`), or names
        // the destination (`destinationOwn`), or names neither: the sparse lists below.
        var destinationOwn: [ArraySlice<Int32>] = []
        switch facts.destinationAddress?.unmapped {
        case .v4(let address)?:
            let found = destinationV4.lookup(address.value)
            destination.append(found.all)
            destinationOwn.append(found.specific)
        case .v6(let address)?:
            let found = destinationV6.lookup(UInt128(address.high) << 64 | UInt128(address.low))
            destination.append(found.all)
            destinationOwn.append(found.specific)
        case nil:
            destination.append(anyDestination)
        }
        if case .hostName(let requested) = facts.destination, !(exactNames.isEmpty && suffixNames.isEmpty) {
            let name = Substring(HostName.normalized(requested))
            if let rules = exactNames[name] {
                destination.append(rules.set)
                destinationOwn.append(rules.list[...])
            }
            if !suffixNames.isEmpty {
                // The name itself, then each domain above it: a.b.example, b.example, example.
                var domain = name
                while true {
                    if let rules = suffixNames[domain] {
                        destination.append(rules.set)
                        destinationOwn.append(rules.list[...])
                    }
                    guard let dot = domain.utf8.firstIndex(of: UInt8(ascii: ".")) else { break }
                    domain = domain[domain.utf8.index(after: dot)...]
                }
            }
        }
        let source: (all: SetRef, specific: ArraySlice<Int32>)
        switch facts.client.address.unmapped {
        case .v4(let address): source = sourceV4.lookup(address.value)
        case .v6(let address): source = sourceV6.lookup(UInt128(address.high) << 64 | UInt128(address.low))
        }
        var sparse: [ArraySlice<Int32>]?
        if neitherSourceNorDestination.count <= Self.sparseLimit {
            destinationOwn.append(source.specific)
            destinationOwn.append(neitherSourceNorDestination[...])
            if destinationOwn.reduce(0, { $0 + $1.count }) <= Self.sparseLimit * 4 { sparse = destinationOwn }
        }
        let time: SetRef
        if let when = facts.time {
            time = times.lookup(UInt32(WeeklyWindow.minuteOfWeek(time: when, utcOffsetSeconds: utcOffsetSeconds))).all
        } else {
            time = anyTime
        }
        return Candidates(
            pool: pool, sparse: sparse,
            all: [
                source.all, ports.lookup(UInt32(facts.destinationPort)).all, facts.claimedUser.flatMap { users[$0] } ?? anyUser,
                commands[facts.command.index], versions[facts.version.index], authMethods[facts.authMethod.index], time,
            ],
            any: destination)
    }

    /// Iterates (AND of `all`) AND (OR of `any`), lowest rule first. The sparsest sets
    /// are tested first, so most words are rejected after one or two loads; a summary
    /// bit per word skips 64 words at a time where some dimension has no rule.
    struct Candidates {
        private let pool: RuleSetPool.Storage
        /// When set: ascending lists that together hold every rule that can match; they
        /// are merged as they are read, and each rule is checked against every dimension.
        private var sparse: [ArraySlice<Int32>]?
        private let all: [SetRef]
        private let any: [SetRef]
        private var summaryIndex = -1
        private var summaryPending: UInt64 = 0
        private var word = 0
        private var pending: UInt64 = 0

        init(pool: RuleSetPool.Storage, sparse: [ArraySlice<Int32>]?, all: [SetRef], any: [SetRef]) {
            self.pool = pool
            self.sparse = sparse
            self.all = sparse == nil ? all.sorted { $0.density < $1.density } : all
            self.any = any
        }

        mutating func next() -> Int? {
            if sparse != nil {
                while let rule = nextSparse() {
                    if pool.contains(Int(rule), all, any) { return Int(rule) }
                }
                return nil
            }
            while pending == 0 {
                guard let nextWord = nextWord() else { return nil }
                word = nextWord
                pending = wordValue(word)
            }
            let bit = pending.trailingZeroBitCount
            pending &= pending - 1
            return word * 64 + bit
        }

        /// The smallest head of the sparse lists, removed from every list that has it.
        private mutating func nextSparse() -> Int32? {
            var smallest = Int32.max
            for list in sparse! { if let head = list.first, head < smallest { smallest = head } }
            guard smallest != .max else { return nil }
            for index in sparse!.indices where sparse![index].first == smallest { sparse![index].removeFirst() }
            return smallest
        }

        private mutating func nextWord() -> Int? {
            while summaryPending == 0 {
                summaryIndex += 1
                guard summaryIndex < pool.summaryCount else { return nil }
                summaryPending = pool.combine(all, any, at: pool.wordCount + summaryIndex)
            }
            let bit = summaryPending.trailingZeroBitCount
            summaryPending &= summaryPending - 1
            return summaryIndex * 64 + bit
        }

        private func wordValue(_ word: Int) -> UInt64 {
            pool.combine(all, any, at: word)
        }
    }
}

/// Where a rule set lies in the pool, and how many rules it holds (for ordering).
struct SetRef: Hashable, Sendable {
    var offset: Int32
    var density: Int32
}

/// Builds the pool of distinct rule sets.
struct RuleSetPool {
    /// Each set's words followed by its summary words, set after set.
    struct Storage: Sendable {
        var buffer: [UInt64] = []
        let wordCount: Int
        let summaryCount: Int

        /// Whether `rule` is in every `all` set and in some `any` set.
        func contains(_ rule: Int, _ all: [SetRef], _ any: [SetRef]) -> Bool {
            let word = rule / 64
            let bit = UInt64(1) << UInt64(rule % 64)
            return buffer.withUnsafeBufferPointer { words in
                all.allSatisfy { words[Int($0.offset) + word] & bit != 0 }
                    && any.contains { words[Int($0.offset) + word] & bit != 0 }
            }
        }

        /// (AND of the `all` sets) AND (OR of the `any` sets) at one position of each set.
        func combine(_ all: [SetRef], _ any: [SetRef], at position: Int) -> UInt64 {
            buffer.withUnsafeBufferPointer { words in
                // The destination union first: it is usually the most selective.
                var result: UInt64 = 0
                for set in any { result |= words[Int(set.offset) + position] }
                for set in all {
                    if result == 0 { return 0 }
                    result &= words[Int(set.offset) + position]
                }
                return result
            }
        }
    }

    private(set) var storage: Storage
    private var known: [RuleSet: SetRef] = [:]

    init(width: Int) {
        let words = max(1, (width + 63) / 64)
        storage = Storage(wordCount: words, summaryCount: (words + 63) / 64)
    }

    mutating func intern(_ set: RuleSet) -> SetRef {
        if let ref = known[set] { return ref }
        let ref = SetRef(offset: Int32(storage.buffer.count), density: Int32(set.words.reduce(0) { $0 + $1.nonzeroBitCount }))
        storage.buffer += set.words
        storage.buffer += set.summary
        known[set] = ref
        return ref
    }
}

/// A set of rule positions as a fixed-width bit set, with a summary bit per word
/// (set when the word is not zero) so that searches skip empty stretches.
struct RuleSet: Hashable, Sendable {
    private(set) var words: [UInt64]
    private(set) var summary: [UInt64]

    init(width: Int, _ members: some Sequence<Int> = [Int]()) {
        let count = max(1, (width + 63) / 64)
        words = [UInt64](repeating: 0, count: count)
        summary = [UInt64](repeating: 0, count: (count + 63) / 64)
        for member in members { insert(member) }
    }

    mutating func insert(_ member: Int) {
        words[member / 64] |= 1 << UInt64(member % 64)
        summary[member / 4096] |= 1 << UInt64(member / 64 % 64)
    }

    mutating func remove(_ member: Int) {
        let word = member / 64
        words[word] &= ~(1 << UInt64(member % 64))
        if words[word] == 0 { summary[word / 64] &= ~(1 << UInt64(word % 64)) }
    }

    func union(_ other: RuleSet) -> RuleSet {
        var result = self
        for index in words.indices { result.words[index] |= other.words[index] }
        for index in summary.indices { result.summary[index] |= other.summary[index] }
        return result
    }
}

/// Maps every point of a number line (addresses, ports, minutes of the week) to the
/// rules whose ranges hold it. Built by a sweep over the range ends; equal sets are
/// stored once, so a table costs one set per distinct region, not per rule.
struct IntervalTable<Key: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// Start of each region, ascending; the first is 0.
    private let starts: [Key]
    /// The rules of each region.
    private let regionSets: [SetRef]
    /// The rules whose own ranges (not "any") cover each region, ascending: region i's
    /// are `specificRules[specificStarts[i]..<specificStarts[i + 1]]`.
    private let specificRules: [Int32]
    private let specificStarts: [Int32]

    /// `ranges[i]`: rule i's ranges on this dimension, or nil for "any".
    init(pool: inout RuleSetPool, _ ranges: [[ClosedRange<Key>]?]) {
        let width = ranges.count
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
        var starts: [Key] = []
        var regionSets: [SetRef] = []
        var specificRules: [Int32] = []
        var specificStarts: [Int32] = []
        var next = 0
        for start in boundaries.sorted() {
            while next < events.count, events[next].at == start {
                let event = events[next]
                active[event.rule] += event.delta
                if active[event.rule] > 0 {
                    current.insert(event.rule)
                } else if ranges[event.rule] != nil {
                    current.remove(event.rule)
                }
                next += 1
            }
            let id = pool.intern(current)
            if regionSets.last != id {
                starts.append(start)
                regionSets.append(id)
                specificStarts.append(Int32(specificRules.count))
                for (index, word) in current.words.enumerated() {
                    var own = word & ~anyRules.words[index]
                    while own != 0 {
                        specificRules.append(Int32(index * 64 + own.trailingZeroBitCount))
                        own &= own - 1
                    }
                }
            }
        }
        specificStarts.append(Int32(specificRules.count))
        self.starts = starts
        self.regionSets = regionSets
        self.specificRules = specificRules
        self.specificStarts = specificStarts
    }

    /// The rules whose condition holds for `key`, and among them those that name a range
    /// (rather than "any").
    func lookup(_ key: Key) -> (all: SetRef, specific: ArraySlice<Int32>) {
        // The last region whose start is at or before the key.
        var low = 0
        var high = starts.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= key { low = middle } else { high = middle - 1 }
        }
        return (regionSets[low], specificRules[Int(specificStarts[low])..<Int(specificStarts[low + 1])])
    }
}

extension RequestFacts.Command {
    /// Position in `allCases`, for array-indexed tables.
    var index: Int {
        switch self {
        case .connect: 0
        case .bind: 1
        case .udp: 2
        }
    }
}

extension RequestFacts.Version {
    var index: Int {
        switch self {
        case .socks4: 0
        case .socks4a: 1
        case .socks5: 2
        }
    }
}

extension RequestFacts.AuthMethod {
    var index: Int {
        switch self {
        case .none: 0
        case .password: 1
        }
    }
}
