import NetAddress
import Testing

@testable import AccessPolicy

func facts(
    client: String = "127.0.0.1:40000", to destination: RequestFacts.Destination = .address(IPAddress("192.0.2.1")!),
    port: UInt16 = 80, resolved: String? = nil, user: String? = nil, command: RequestFacts.Command = .connect
) -> RequestFacts {
    RequestFacts(
        version: .socks5, command: command, client: IPEndpoint(client)!, listener: IPEndpoint("127.0.0.1:1080")!,
        destination: destination, destinationPort: port, resolvedAddress: resolved.flatMap(IPAddress.init),
        claimedUser: user
    )
}

@Suite struct RuleListTests {
    @Test func defaultAllowsLoopbackOnly() {
        let policy = RuleList.loopbackClientsOnly
        #expect(policy.decideNow(facts(client: "127.0.0.1:1")).verdict == .allow)
        #expect(policy.decideNow(facts(client: "[::1]:1")).verdict == .allow)
        #expect(policy.decideNow(facts(client: "[::ffff:127.0.0.5]:1")).verdict == .allow)
        let outsider = policy.decideNow(facts(client: "10.0.0.1:1"))
        #expect(outsider.verdict == .deny)
        #expect(outsider.refusal == .notAllowed)
        #expect(outsider.rule == nil, "the implicit final deny decided")
        #expect(outsider.trace.count == 1)
        #expect(outsider.trace[0].matched == false)
        #expect(outsider.trace[0].reason.contains("10.0.0.1"))
    }

    @Test func firstMatchWins() {
        let policy = RuleList([
            Rule(.deny, RuleReference(line: 1, label: "metadata"), destinations: [.network(IPNetwork("169.254.169.254/32")!)]),
            Rule(.allow, RuleReference(line: 2), ports: [80...80, 443...443]),
        ])
        let metadata = policy.decideNow(facts(to: .address(IPAddress("169.254.169.254")!)))
        #expect(metadata.verdict == .deny)
        #expect(metadata.rule == RuleReference(line: 1, label: "metadata"))
        #expect(policy.decideNow(facts(port: 443)).rule?.line == 2)
        #expect(policy.decideNow(facts(port: 22)).verdict == .deny)
    }

    @Test func cidrRulesMatchTheResolvedAddressOfAName() {
        let policy = RuleList([Rule(.deny, destinations: [.network(IPNetwork("10.0.0.0/8")!)]), Rule(.allow)])
        #expect(policy.decideNow(facts(to: .hostName("intranet"), resolved: "10.1.1.1")).verdict == .deny)
        #expect(policy.decideNow(facts(to: .hostName("intranet"), resolved: "192.0.2.7")).verdict == .allow)
        #expect(policy.decideNow(facts(to: .hostName("unresolvable"))).verdict == .allow)
    }

    @Test func hostNameAndSuffixRules() {
        let policy = RuleList([
            Rule(.allow, RuleReference(line: 1), destinations: [.domainSuffix(".example.com")]),
            Rule(.allow, RuleReference(line: 2), destinations: [.hostName("Exact.Org")]),
        ])
        #expect(policy.decideNow(facts(to: .hostName("www.EXAMPLE.com."))).rule?.line == 1)
        #expect(policy.decideNow(facts(to: .hostName("example.com"))).rule?.line == 1)
        #expect(policy.decideNow(facts(to: .hostName("badexample.com"))).verdict == .deny)
        #expect(policy.decideNow(facts(to: .hostName("exact.org"))).rule?.line == 2)
        #expect(policy.decideNow(facts(to: .hostName("sub.exact.org"))).verdict == .deny)
        #expect(
            policy.decideNow(facts(to: .address(IPAddress("192.0.2.1")!))).verdict == .deny,
            "name rules never match an address request (no reverse DNS)")
    }

    @Test func usersAndCommands() {
        let policy = RuleList([Rule(.allow, commands: [.connect], users: ["alice"])])
        #expect(policy.decideNow(facts(user: "alice")).verdict == .allow)
        #expect(policy.decideNow(facts(user: "bob")).verdict == .deny)
        #expect(policy.decideNow(facts(user: nil)).trace[0].reason == "no user was claimed")
        #expect(policy.decideNow(facts(user: "alice", command: .bind)).verdict == .deny)
    }
}
