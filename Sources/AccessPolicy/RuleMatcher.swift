import NetAddress

/// The compiled form of a policy's conditions, in the manner of packet classifiers.
///
/// For every dimension (client, destination, port, user, command, version, auth,
/// time) a lookup answers which rules' conditions hold: the rules with no condition on
/// that dimension (a bit set, fixed per dimension) plus the rules whose condition names
/// the value (an ascending list, from an interval table or a hash table). A lookup is a
/// binary search or a hash probe.
///
/// Every rule that matches a request either names the client's network, or names its
/// destination, or names neither; so the candidates are the merge of a few short
/// ascending lists, and each is checked against every other dimension with a bit test
/// or a binary search. The cost grows with the number of rules that mention this
/// client or destination, not with the policy's size. Only rules with neither a `from`
/// nor a `to` are visited in order, since no index narrows them.
///
/// `ident` is not a dimension: the engine checks it on the candidates in order.
struct RuleMatcher: Sendable {
    private let clientV4: IntervalTable<UInt32>
    private let clientV6: IntervalTable<UInt128>
    private let destinationV4: IntervalTable<UInt32>
    private let destinationV6: IntervalTable<UInt128>
    /// Rules that name the host exactly, or a domain above it, by name.
    private let exactNames: [Substring: [Int32]]
    private let suffixNames: [Substring: [Int32]]
    /// The other conditions of each rule, in a form that tests without allocating:
    /// candidates are few, so checking them one by one beats more lookups.
    private let tests: [RuleTest]
    /// Rules with neither a client nor a destination condition, ascending.
    private let unnarrowed: [Int32]
    private let utcOffsetSeconds: Int

    init(policy: Policy) {
        let rules = policy.rules
        utcOffsetSeconds = policy.utcOffsetSeconds

        tests = rules.map(RuleTest.init)

        func v4Ranges(_ networks: [IPNetwork]) -> [ClosedRange<UInt32>] { networks.compactMap(\.v4Range) }
        func v6Ranges(_ networks: [IPNetwork]) -> [ClosedRange<UInt128>] { networks.compactMap(\.v6Range) }
        clientV4 = IntervalTable(rules.map { $0.sources.map(v4Ranges) })
        clientV6 = IntervalTable(rules.map { $0.sources.map(v6Ranges) })

        // A rule with only name patterns has an empty list of networks (never matches an
        // address), not nil (matches any).
        let destinationNetworks: [[IPNetwork]?] = rules.map { rule in
            rule.destinations.map { $0.compactMap { if case .network(let network) = $0 { network } else { nil } } }
        }
        destinationV4 = IntervalTable(destinationNetworks.map { $0.map(v4Ranges) })
        destinationV6 = IntervalTable(destinationNetworks.map { $0.map(v6Ranges) })
        var exact: [Substring: [Int32]] = [:]
        var suffix: [Substring: [Int32]] = [:]
        for (index, rule) in rules.enumerated() {
            for pattern in rule.destinations ?? [] {
                switch pattern {
                case .hostName(let name): exact[Substring(name), default: []].append(Int32(index))
                case .domainSuffix(let domain): suffix[Substring(domain), default: []].append(Int32(index))
                case .network: break
                }
            }
        }
        exactNames = exact.mapValues(Self.ascendingUnique)
        suffixNames = suffix.mapValues(Self.ascendingUnique)
        unnarrowed = rules.indices.filter { rules[$0].sources == nil && rules[$0].destinations == nil }.map(Int32.init)
    }

    private static func ascendingUnique(_ rules: [Int32]) -> [Int32] {
        Array(Set(rules)).sorted()
    }

    /// The rules whose every condition but `ident` holds, in policy order.
    func candidates(for facts: RequestFacts) -> Candidates {
        let client: DimensionMatch
        switch facts.client.address.unmapped {
        case .v4(let address): client = clientV4.lookup(address.value)
        case .v6(let address): client = clientV6.lookup(address.value)
        }

        // Rules naming the destination: by the address to be connected to, by the exact
        // name, or by a domain above it.
        var destination: DimensionMatch
        switch facts.destinationAddress?.unmapped {
        case .v4(let address)?: destination = destinationV4.lookup(address.value)
        case .v6(let address)?: destination = destinationV6.lookup(address.value)
        case nil: destination = destinationV4.wildcardOnly
        }
        if case .hostName(let requested) = facts.destination, !(exactNames.isEmpty && suffixNames.isEmpty) {
            let name = Substring(HostName.normalized(requested))
            if let rules = exactNames[name] { destination.named.append(rules[...]) }
            if !suffixNames.isEmpty {
                // The name itself, then each domain above it: a.b.example, b.example, example.
                var domain = name
                while true {
                    if let rules = suffixNames[domain] { destination.named.append(rules[...]) }
                    guard let dot = domain.utf8.firstIndex(of: UInt8(ascii: ".")) else { break }
                    domain = domain[domain.utf8.index(after: dot)...]
                }
            }
        }

        let request = RequestKey(
            facts, minuteOfWeek: facts.time.map { WeeklyWindow.minuteOfWeek(time: $0, utcOffsetSeconds: utcOffsetSeconds) })
        var sources = client.named
        sources += destination.named
        sources.append(unnarrowed[...])
        return Candidates(sources: sources, client: client, destination: destination, tests: tests, request: request)
    }

    /// Merges the candidate lists in ascending order and yields those that pass every
    /// dimension.
    struct Candidates {
        private var sources: [ArraySlice<Int32>]
        private let client: DimensionMatch
        private let destination: DimensionMatch
        private let tests: [RuleTest]
        private let request: RequestKey

        init(
            sources: [ArraySlice<Int32>], client: DimensionMatch, destination: DimensionMatch, tests: [RuleTest],
            request: RequestKey
        ) {
            self.sources = sources
            self.client = client
            self.destination = destination
            self.tests = tests
            self.request = request
        }

        mutating func next() -> Int? {
            while let rule = nextCandidate() {
                if tests[rule].holds(for: request) && client.contains(rule) && destination.contains(rule) { return rule }
            }
            return nil
        }

        /// The smallest head of the lists, removed from every list that has it.
        private mutating func nextCandidate() -> Int? {
            var smallest = Int32.max
            for list in sources {
                if let head = list.first, head < smallest { smallest = head }
            }
            guard smallest != .max else { return nil }
            for index in sources.indices where sources[index].first == smallest {
                sources[index].removeFirst()
            }
            return Int(smallest)
        }
    }
}

/// The parts of a request the per-rule tests look at.
struct RequestKey {
    var commandBit: UInt8
    var versionBit: UInt8
    var authBit: UInt8
    var port: UInt16
    var user: String?
    var minuteOfWeek: Int?

    init(_ facts: RequestFacts, minuteOfWeek: Int?) {
        commandBit = 1 << facts.command.index
        versionBit = 1 << facts.version.index
        authBit = 1 << facts.authMethod.index
        port = facts.destinationPort
        user = facts.claimedUser
        self.minuteOfWeek = minuteOfWeek
    }
}

/// A rule's conditions other than client, destination and ident.
struct RuleTest: Sendable {
    var commands: UInt8
    var versions: UInt8
    var authMethods: UInt8
    var ports: [ClosedRange<UInt16>]?
    var users: Set<String>?
    var minutes: [ClosedRange<Int>]?

    init(_ rule: Rule) {
        commands = rule.commands.bitMask()
        versions = rule.versions.bitMask()
        authMethods = rule.authMethods.bitMask()
        ports = rule.ports
        users = rule.users
        minutes = rule.times?.flatMap(\.minuteRanges)
    }

    func holds(for request: RequestKey) -> Bool {
        guard commands & request.commandBit != 0, versions & request.versionBit != 0, authMethods & request.authBit != 0 else {
            return false
        }
        if let ports, !ports.contains(where: { $0.contains(request.port) }) { return false }
        if let users {
            guard let user = request.user, users.containsUser(user) else { return false }
        }
        if let minutes {
            guard let minute = request.minuteOfWeek, minutes.contains(where: { $0.contains(minute) }) else { return false }
        }
        return true
    }
}

/// Which rules hold on one dimension for one request: those without a condition on it,
/// and those whose condition names the request's value (ascending lists; the
/// destination may have several, for its address and its names).
struct DimensionMatch: Sendable {
    var wildcard: RuleSet
    var named: [ArraySlice<Int32>]

    func contains(_ rule: Int) -> Bool {
        wildcard.contains(rule) || named.contains { $0.binarySearchContains(Int32(rule)) }
    }
}

extension ArraySlice where Element == Int32 {
    func binarySearchContains(_ value: Int32) -> Bool {
        var low = startIndex
        var high = endIndex
        while low < high {
            let middle = low + (high - low) / 2
            if self[middle] < value { low = middle + 1 } else { high = middle }
        }
        return low < endIndex && self[low] == value
    }
}

/// A set of rule positions as a fixed-width bit set.
struct RuleSet: Hashable, Sendable {
    private(set) var words: [UInt64]

    init(width: Int, _ members: some Sequence<Int> = [Int]()) {
        words = [UInt64](repeating: 0, count: max(1, (width + 63) / 64))
        for member in members { words[member / 64] |= 1 << UInt64(member % 64) }
    }

    func contains(_ member: Int) -> Bool {
        words[member / 64] & (1 << UInt64(member % 64)) != 0
    }
}

/// Maps every point of a number line (addresses, ports, minutes of the week) to the
/// rules whose ranges hold it. The line is cut into regions at every range end; a
/// segment tree over the regions stores each rule's range in O(log regions) nodes, so a
/// wide range (`from 10.0.0.0/8` in every rule) costs no more than a narrow one, and a
/// lookup collects the ascending lists on one leaf-to-root path. Rules with no ranges
/// ("any") are kept apart in one bit set.
struct IntervalTable<Key: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// Start of each region, ascending; the first is 0.
    private let starts: [Key]
    /// Leaves start at `leafBase`; node i's children are 2i and 2i+1. Node i's rules are
    /// `nodeRules[nodeStarts[i]..<nodeStarts[i + 1]]`: one flat buffer, so a lookup
    /// touches no reference counts.
    private let leafBase: Int
    private let nodeStarts: [Int32]
    private let nodeRules: [Int32]
    private let wildcard: RuleSet

    /// `ranges[i]`: rule i's ranges on this dimension, or nil for "any".
    init(_ ranges: [[ClosedRange<Key>]?]) {
        wildcard = RuleSet(width: ranges.count, ranges.indices.filter { ranges[$0] == nil })
        var boundaries: Set<Key> = [0]
        for range in ranges.lazy.compactMap({ $0 }).joined() {
            boundaries.insert(range.lowerBound)
            if range.upperBound < Key.max { boundaries.insert(range.upperBound + 1) }
        }
        let starts = boundaries.sorted()
        var leafBase = 1
        while leafBase < starts.count { leafBase *= 2 }
        var nodes = [[Int32]](repeating: [], count: 2 * leafBase)
        func region(_ key: Key) -> Int { Self.region(of: key, in: starts) }
        // Rules are added in order, so every node's list is ascending.
        for (rule, ruleRanges) in ranges.enumerated() {
            for range in ruleRanges ?? [] {
                var low = region(range.lowerBound) + leafBase
                var high = region(range.upperBound) + leafBase + 1
                while low < high {
                    if low & 1 == 1 {
                        if nodes[low].last != Int32(rule) { nodes[low].append(Int32(rule)) }
                        low += 1
                    }
                    if high & 1 == 1 {
                        high -= 1
                        if nodes[high].last != Int32(rule) { nodes[high].append(Int32(rule)) }
                    }
                    low /= 2
                    high /= 2
                }
            }
        }
        self.starts = starts
        self.leafBase = leafBase
        var nodeStarts: [Int32] = [0]
        nodeStarts.reserveCapacity(nodes.count + 1)
        for node in nodes { nodeStarts.append(nodeStarts.last! + Int32(node.count)) }
        self.nodeStarts = nodeStarts
        self.nodeRules = Array(nodes.joined())
    }

    /// The last region whose start is at or before the key.
    private static func region(of key: Key, in starts: [Key]) -> Int {
        var low = 0
        var high = starts.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= key { low = middle } else { high = middle - 1 }
        }
        return low
    }

    /// Only the rules without a condition on this dimension (the value is unknown).
    var wildcardOnly: DimensionMatch { DimensionMatch(wildcard: wildcard, named: []) }

    func lookup(_ key: Key) -> DimensionMatch {
        var named: [ArraySlice<Int32>] = []
        var node = Self.region(of: key, in: starts) + leafBase
        while node >= 1 {
            let (low, high) = (Int(nodeStarts[node]), Int(nodeStarts[node + 1]))
            if low < high { named.append(nodeRules[low..<high]) }
            node /= 2
        }
        return DimensionMatch(wildcard: wildcard, named: named)
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
        case .http: 3
        }
    }
}

extension RequestFacts.AuthMethod {
    var index: Int {
        switch self {
        case .none: 0
        case .password: 1
        case .gssapi: 2
        }
    }
}
