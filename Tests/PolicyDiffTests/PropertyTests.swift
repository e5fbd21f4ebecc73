import AccessPolicy
import Foundation
import NetAddress
import Testing

@testable import PolicyDiff

/// The engine is the oracle: for random policies and random edits of them, every request
/// the two engines decide differently lies in a reported region, and every request in a
/// reported region is decided differently. A diff that misses a change fails here.
@Suite struct PolicyDiffPropertyTests {
    struct Random {
        var state: UInt64

        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }

        mutating func below(_ count: Int) -> Int { Int(next() % UInt64(count)) }
        mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
        mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }

        mutating func some(_ values: [String], most: Int = 2) -> String {
            (0...below(most)).map { _ in pick(values) }.joined(separator: ", ")
        }
    }

    static let sources = ["10.0.0.0/8", "10.20.0.0/16", "192.168.1.0/24", "127.0.0.1", "::1", "2001:db8::/32"]
    static let destinations = [
        "192.0.2.0/24", "192.0.2.7", "198.51.100.0/24", "example.com", ".example.com", "www.example.com", ".corp.example",
        "2001:db8:1::/48",
    ]
    static let ports = ["22", "80", "443", "1024-65535", "8000-8080"]
    static let users = ["alice", "bob", "*@CORP.EXAMPLE", "carol@CORP.EXAMPLE"]
    static let groups = ["staff", "admins"]

    static func rule(_ random: inout Random) -> String {
        let allow = random.chance(65)
        var words = [allow ? "allow" : "deny"]
        if random.chance(25) { words.append(random.pick(["connect", "bind", "udp", "connect, bind"])) }
        if random.chance(50) { words.append("from " + random.some(sources)) }
        if random.chance(50) { words.append("to " + random.some(destinations)) }
        if random.chance(40) { words.append("port " + random.some(ports)) }
        if random.chance(20) { words.append("user " + random.some(users)) }
        if random.chance(20) { words.append("version " + random.some(["socks4", "socks4a", "socks5", "http"])) }
        if random.chance(20) { words.append("auth " + random.some(["none", "password", "gssapi"])) }
        if random.chance(15) { words.append("ident") }
        if random.chance(15) { words.append("group " + random.some(groups)) }
        if random.chance(10) { words.append("time " + random.pick(["mon-fri 08:00-18:00", "daily 22:00-06:00", "sat 09:00-13:00"])) }
        if allow, random.chance(8) { words.append("via " + random.pick(["socks5://192.0.2.200:1080", "socks4://192.0.2.201:1080"])) }
        return words.joined(separator: " ")
    }

    static func policy(_ random: inout Random) -> [String] {
        var lines: [String] = []
        if random.chance(50) { lines.append("ident from " + random.pick(["10.0.0.0/8", "10.20.0.0/16, ::1"]) + " timeout 5s") }
        if random.chance(30) { lines.append("gssapi local-realm CORP.EXAMPLE") }
        if random.chance(30) { lines.append("timezone " + random.pick(["UTC+01:00", "UTC-05:00"])) }
        if random.chance(30) { lines.append("limit sessions 10 per " + random.pick(["client", "user"])) }
        if random.chance(20) { lines.append("limit udp sessions 5 per client group staff") }
        lines += (0..<(2 + random.below(6))).map { _ in rule(&random) }
        return lines
    }

    static func edited(_ lines: [String], _ random: inout Random) -> [String] {
        var lines = lines
        let ruleIndices = lines.indices.filter { lines[$0].hasPrefix("allow") || lines[$0].hasPrefix("deny") }
        switch random.below(5) {
        case 0: lines[random.pick(ruleIndices)] = rule(&random)
        case 1: lines.insert(rule(&random), at: random.pick(ruleIndices))
        case 2: lines.remove(at: random.pick(ruleIndices))
        case 3:
            let index = random.pick(ruleIndices)
            let line = lines[index]
            // (A deny has no parents to go through.)
            let words = line.split(separator: " ").map(String.init)
            let kept = words.firstIndex(of: "via").map { Array(words[..<$0]) } ?? words
            lines[index] = ([line.hasPrefix("allow") ? "deny" : "allow"] + kept.dropFirst()).joined(separator: " ")
        default:
            if ruleIndices.count > 1 {
                let index = random.below(ruleIndices.count - 1)
                lines.swapAt(ruleIndices[index], ruleIndices[index + 1])
            }
        }
        return lines
    }

    /// A request a client could make, with identd's and the directory's answers.
    static func request(_ random: inout Random) -> (RequestFacts, IdentAnswer, GroupAnswer)? {
        let version = random.pick(RequestFacts.Version.allCases)
        let command = random.pick(RequestFacts.Command.allCases)
        let auth = random.pick(RequestFacts.AuthMethod.allCases)
        let user: String? = random.chance(25) ? nil : random.pick(["alice", "bob", "carol", "alice@CORP.EXAMPLE", "dave@CORP.EXAMPLE", "x@OTHER"])
        let named = random.chance(40)
        let address = IPAddress(random.pick(["192.0.2.7", "192.0.2.99", "198.51.100.1", "8.8.8.8", "2001:db8:1::1"]))!
        let name = random.pick(["example.com", "www.example.com", "a.example.com", "wiki.corp.example", "other.org"])
        switch version {
        case .socks4: if auth != .none || command == .udp || named || address.isIPv6 { return nil }
        case .socks4a: if auth != .none || command == .udp || (!named && address.isIPv6) { return nil }
        case .http: if command != .connect { return nil }
        case .socks5: break
        }
        if auth != .none, user == nil { return nil }
        let client = IPAddress(random.pick(["10.1.2.3", "10.20.0.5", "192.168.1.9", "127.0.0.1", "::1", "2001:db8::5", "203.0.113.9"]))!
        let facts = RequestFacts(
            version: version, command: command, client: IPEndpoint(address: client, port: 40000),
            listener: IPEndpoint(address: .v4(.loopback), port: 1080), destination: named ? .hostName(name) : .address(address),
            destinationPort: UInt16(random.pick([1, 22, 80, 443, 2000, 8080, 65535])),
            resolvedAddress: named && random.chance(60) ? address : nil, claimedUser: user, authMethod: auth,
            time: Example.mondayMidnight + Int64(random.below(7 * 1440)) * 60)
        let ident: IdentOutcome = random.pick([.failure(.unreachable), .userID(user ?? "nobody"), .userID("alice"), .userID("mallory")])
        let groups: GroupAnswer = random.pick([
            .member(of: []), .member(of: ["staff"]), .member(of: ["admins", "other"]), .unavailable("down"), .noSuchUser,
        ])
        return (facts, IdentAnswer(ident), groups)
    }

    @Test func noChangeIsMissedAndNoneIsInvented() async throws {
        var random = Random(state: 20_261_205)
        var pairs = 0
        var differing = 0
        let pairCount = Int(ProcessInfo.processInfo.environment["IDENTGATE_DIFF_PAIRS"] ?? "") ?? 40
        let requestCount = Int(ProcessInfo.processInfo.environment["IDENTGATE_DIFF_REQUESTS"] ?? "") ?? 300
        for _ in 0..<pairCount {
            let oldLines = Self.policy(&random)
            let newLines = Self.edited(oldLines, &random)
            let old = compiled(oldLines.joined(separator: "\n"))
            let new = compiled(newLines.joined(separator: "\n"))
            let clock = ContinuousClock.now
            let diff = try await PolicyDiff(old: old, new: new)
            // This test computes for seconds without suspending: it yields between pieces of
            // work so that the suites running beside it on the two cooperative threads (with
            // deadlines of their own) are not starved meanwhile.
            await Task.yield()
            if ProcessInfo.processInfo.environment["IDENTGATE_DIFF_TRACE"] != nil {
                print("pair \(pairs): \(ContinuousClock.now - clock), \(diff.regionsSettled) regions, \(diff.differences.count) rows")
                if ContinuousClock.now - clock > .seconds(2) { print(oldLines.joined(separator: "\n") + "\n---\n" + newLines.joined(separator: "\n")) }
            }
            let space = RequestSpace([old, new])
            let engines = (PolicyEngine(policy: old), PolicyEngine(policy: new))
            pairs += 1
            for difference in diff.differences {
                #expect(difference.old.outcome != difference.new.outcome)
            }
            for index in 0..<requestCount {
                if index % 50 == 0 { await Task.yield() }
                guard let (facts, ident, groups) = Self.request(&random) else { continue }
                let oldSide = await PolicyDiff.decide(engines.0, old, facts, ident: ident, groups: groups)
                let newSide = await PolicyDiff.decide(engines.1, new, facts, ident: ident, groups: groups)
                let coordinates = space.coordinates(facts, ident: ident.outcome, groups: groups)
                let reported = diff.differences.contains { $0.boxes.contains { $0.contains(coordinates) } }
                let differs = oldSide.outcome != newSide.outcome
                if differs { differing += 1 }
                #expect(
                    reported == differs,
                    """
                    \(differs ? "missed" : "invented"): \(facts) ident \(ident.outcome) groups \(groups)
                    old: \(oldSide.outcome)  new: \(newSide.outcome)
                    --- old
                    \(oldLines.joined(separator: "\n"))
                    --- new
                    \(newLines.joined(separator: "\n"))
                    regions: \(diff.differences.map(\.regionLine))
                    """)
            }
        }
        #expect(pairs == pairCount)
        #expect(differing > pairCount * 3, "the random requests meet the changes often enough to test something")
    }
}
