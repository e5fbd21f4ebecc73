import AccessPolicy
import NetAddress

/// One real request of a region, with what identd and the directory answer: what the
/// engines decide for the whole region. A region may hold no real request at all (a
/// SOCKS4 client with a password, UDP over HTTP): then there is none.
struct Example: Sendable {
    let facts: RequestFacts
    let ident: IdentAnswer
    let groups: GroupAnswer
    /// The minute of the week in UTC (`Dimension.time`).
    let minute: Int

    /// Monday 2024-01-01 00:00 UTC: minute 0 of the week the examples are in.
    static let mondayMidnight: Int64 = 1_704_067_200

    init?(_ region: Region, space: RequestSpace) {
        let choices: [Dimension] = [.version, .command, .auth, .destinationKind, .user]
        var combinations = 1
        for dimension in choices { combinations *= region[dimension].count(upTo: 1 << 16) }
        var found: Point?
        var point = Point(region: region)
        // Each of these has a few values; the users, up to a few thousand.
        func visit(_ depth: Int) -> Bool {
            if depth == choices.count {
                if Self.possible(point, region) { found = point }
                return found != nil
            }
            // SOCKS5 first, the version most examples are about.
            let values = region[choices[depth]].values
            let ordered = choices[depth] == .version ? values.sorted { Self.versionOrder($0) < Self.versionOrder($1) } : values
            for value in ordered {
                point.values[choices[depth].rawValue] = value
                if visit(depth + 1) { return true }
            }
            return false
        }
        guard combinations <= 1 << 16, visit(0), let point = found else { return nil }
        let version = RequestFacts.Version.allCases[point[.version]]
        let ipv4Only = version == .socks4 || (version == .socks4a && point[.destinationKind] == 0)
        let destinations = ipv4Only ? region[.destinationAddress].intersection(mappedIPv4) : region[.destinationAddress]
        guard let client = Self.address(in: region[.client], preferring: Self.clients),
            let address = Self.address(in: destinations, preferring: Self.destinations),
            let port = [443, 80, 22].first(where: { region[.port].contains(UInt128($0)) }).map(UInt128.init)
                ?? Self.pick(region[.port])
        else { return nil }
        let destination: RequestFacts.Destination
        var resolved: IPAddress?
        if point[.destinationKind] == 0 {
            destination = .address(address)
        } else {
            destination = .hostName(space.hostNames[point[.destinationName]])
            if point[.resolved] == 1 { resolved = address }
        }
        minute = Int(region[.time].first ?? 0)
        let user = space.users[point[.user]]
        facts = RequestFacts(
            version: version, command: RequestFacts.Command.allCases[point[.command]],
            client: IPEndpoint(address: client, port: 40000),
            listener: IPEndpoint(address: client.isIPv6 ? .v6(.loopback) : .v4(.loopback), port: 1080),
            destination: destination, destinationPort: UInt16(port), resolvedAddress: resolved, claimedUser: user,
            authMethod: RequestFacts.AuthMethod.allCases[point[.auth]], time: Self.mondayMidnight + Int64(minute) * 60)
        ident = IdentAnswer(space.identAnswer(point[.ident], claimed: user).map(IdentOutcome.userID) ?? .failure(.unreachable))
        groups =
            point[.directory] == 1
            ? .unavailable("posed by identgate diff")
            : .member(of: Set(space.groups.indices.filter { point[.groups] & 1 << $0 != 0 }.map { space.groups[$0] }))
    }

    private static func versionOrder(_ index: Int) -> Int {
        [RequestFacts.Version.socks5, .http, .socks4a, .socks4].firstIndex(of: RequestFacts.Version.allCases[index]) ?? 0
    }

    /// Whether a client can make such a request: SOCKS4 has no authentication and no UDP
    /// and SOCKS4 without 4a no host names; HTTP proxies only connect; a password or
    /// GSS-API always comes with a user.
    private static func possible(_ point: Point, _ region: Region) -> Bool {
        let version = RequestFacts.Version.allCases[point[.version]]
        let command = RequestFacts.Command.allCases[point[.command]]
        let auth = RequestFacts.AuthMethod.allCases[point[.auth]]
        let name = point[.destinationKind] == 1
        switch version {
        case .socks4:
            guard auth == .none, command != .udp, !name, !region[.destinationAddress].isDisjoint(with: mappedIPv4) else { return false }
        case .socks4a:
            guard auth == .none, command != .udp else { return false }
            if !name, region[.destinationAddress].isDisjoint(with: mappedIPv4) { return false }
        case .http:
            guard command == .connect else { return false }
        case .socks5:
            break
        }
        return auth == .none || point[.user] != 0
    }

    /// Where examples' addresses come from when the region lets them: private networks
    /// for clients, the documentation networks for destinations, IPv4 before IPv6.
    private static let clients = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "192.0.2.0/24", "0.0.0.0/0", "2001:db8::/32"]
        .map { IntervalSet(networks: IPNetwork($0).map { [$0] } ?? []) }
    private static let destinations = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "0.0.0.0/0", "2001:db8::/32"]
        .map { IntervalSet(networks: IPNetwork($0).map { [$0] } ?? []) }

    /// An address of the set, from the first preferred block it meets, and not a network's
    /// first address when it can help it (10.0.0.1 reads better than 10.0.0.0).
    private static func address(in set: IntervalSet, preferring blocks: [IntervalSet]) -> IPAddress? {
        let inside = blocks.lazy.map { set.intersection($0) }.first { !$0.isEmpty } ?? set
        guard let value = pick(inside) else { return nil }
        if mappedIPv4.contains(value) { return .v4(IPv4Address(UInt32(truncatingIfNeeded: value))) }
        return .v6(IPv6Address(high: UInt64(truncatingIfNeeded: value >> 64), low: UInt64(truncatingIfNeeded: value)))
    }

    /// The set's first value, or the one after it when the first range has more: port 1,
    /// not 0; 10.0.0.1, not the network's own address.
    private static func pick(_ set: IntervalSet) -> UInt128? {
        guard let range = set.ranges.first else { return nil }
        return range.upperBound > range.lowerBound ? range.lowerBound + 1 : range.lowerBound
    }
}
