import NetAddress
import Testing

@testable import AccessPolicy

/// `limit` lines: the language, the lint, `expect`, and the ledger the gateway counts with.
@Suite struct LimitTests {
    static let second: Int64 = 1_000_000_000

    func ledger(_ text: String) -> LimitLedger {
        LimitLedger(limits: policy("allow from any\n" + text).limits)
    }

    func admitted(_ admission: LimitLedger.Admission) -> SessionLease?? {
        if case .admitted(let lease) = admission { return .some(lease) }
        return nil
    }

    func refusal(_ admission: LimitLedger.Admission) -> LimitRefusal? {
        if case .refused(let refusal) = admission { return refusal }
        return nil
    }

    @Test func sessionsPerClientAreCountedAndGivenBack() throws {
        var ledger = ledger("limit sessions 2 per client")
        let a = facts(from: "10.0.0.1:1")
        let first = try #require(admitted(ledger.admit(a, now: 0)) ?? nil)
        #expect(admitted(ledger.admit(a, now: 0)) != nil)
        let refused = try #require(refusal(ledger.admit(a, now: 0)))
        #expect(refused.reason == "limit reached: 2 open sessions per client (client 10.0.0.1)")
        #expect(refused.limit.reference.line == 2)
        // Another client has its own counter.
        #expect(admitted(ledger.admit(facts(from: "10.0.0.2:1"), now: 0)) != nil)
        ledger.release(first)
        #expect(admitted(ledger.admit(a, now: 0)) != nil)
        // A lease given back twice changes nothing.
        ledger.release(first)
        #expect(refusal(ledger.admit(a, now: 0)) != nil)
        #expect(ledger.openSessions == 3)
    }

    @Test func aRefusedSessionUsesUpNoOtherShare() {
        var ledger = ledger("limit sessions 1 per client\nlimit sessions 3 total")
        for _ in 0..<10 { _ = ledger.admit(facts(from: "10.0.0.1"), now: 0) }
        // Nine refusals of 10.0.0.1 took nothing from the total.
        #expect(admitted(ledger.admit(facts(from: "10.0.0.2"), now: 0)) != nil)
        #expect(admitted(ledger.admit(facts(from: "10.0.0.3"), now: 0)) != nil)
        #expect(refusal(ledger.admit(facts(from: "10.0.0.4"), now: 0))?.limit.scope == .total)
    }

    @Test func perUserCountsVerifiedUsersAcrossAddresses() {
        var ledger = ledger("limit sessions 1 per user")
        #expect(admitted(ledger.admit(facts(from: "10.0.0.1", user: "alice", auth: .password), now: 0)) != nil)
        #expect(refusal(ledger.admit(facts(from: "10.0.0.2", user: "alice", auth: .password), now: 0)) != nil)
        #expect(admitted(ledger.admit(facts(from: "10.0.0.2", user: "bob", auth: .password), now: 0)) != nil)
        for _ in 0..<5 { #expect(admitted(ledger.admit(facts(from: "10.0.0.2"), now: 0)) != nil) }
    }

    /// Defect 6 of issue 23: two SOCKS4 requests from other hosts claiming USERID alice
    /// used up alice's share, and the real alice (with her password) was refused.
    @Test func claimedNamesCountPerClientNotAsTheUser() throws {
        var ledger = ledger("limit sessions 2 per user")
        let forger = facts(.socks4, from: "10.0.0.66", user: "alice")
        #expect(admitted(ledger.admit(forger, now: 0)) != nil)
        #expect(admitted(ledger.admit(facts(.socks4, from: "10.0.0.66", user: "carol"), now: 0)) != nil)
        // Every unverified name from one client shares that client's counter.
        let refused = try #require(refusal(ledger.admit(facts(.socks4, from: "10.0.0.66", user: "dave"), now: 0)))
        #expect(refused.subject == .unverifiedUsers(IPAddress("10.0.0.66")!))
        // The real alice still has her whole share.
        let alice = facts(from: "10.0.0.1", user: "alice", auth: .password)
        #expect(admitted(ledger.admit(alice, now: 0)) != nil)
        #expect(admitted(ledger.admit(alice, now: 0)) != nil)
        #expect(refusal(ledger.admit(alice, now: 0))?.subject == .user("alice"))
        // A name identd confirmed is verified too (the decision carries the answer).
        var confirmed = Decision(.allow(route: nil), rule: nil, trace: [])
        confirmed.identAnswer = IdentAnswer(.userID("bob"))
        let bob = facts(.socks4, from: "10.0.0.2", user: "bob").attributed(by: confirmed)
        #expect(bob.verifiedUser == "bob")
        #expect(facts(.socks4, from: "10.0.0.2", user: "mallory").attributed(by: confirmed).verifiedUser == nil)
    }

    @Test func lintWarnsOfAPerUserLimitThatClaimedNamesReach() {
        let open = diagnostics("allow from 10.0.0.0/8\nlimit sessions 2 per user\n")
        #expect(open.contains { $0.contains("names that are only claimed reach this per-user limit: the rule on line 1") })
        let verified = diagnostics("allow from 10.0.0.0/8 ident\nlimit sessions 2 per user\n")
        #expect(!verified.contains { $0.contains("only claimed") })
        let passwords = diagnostics("allow from 10.0.0.0/8\nlimit sessions 2 per user auth password\n")
        #expect(!passwords.contains { $0.contains("only claimed") })
    }

    @Test func ratesAreTokenBuckets() {
        var ledger = ledger("limit rate 4/s per client")
        let a = facts(from: "10.0.0.1")
        for _ in 0..<4 { #expect(admitted(ledger.admit(a, now: 0)) != nil) }
        #expect(refusal(ledger.admit(a, now: 0))?.reason == "limit reached: 4 new sessions a second per client (client 10.0.0.1)")
        // One token comes back every quarter second.
        #expect(refusal(ledger.admit(a, now: Self.second / 5)) != nil)
        #expect(admitted(ledger.admit(a, now: Self.second / 4)) != nil)
        #expect(refusal(ledger.admit(a, now: Self.second / 4)) != nil)
        // A rate holds no lease: nothing to give back.
        #expect(admitted(ledger.admit(a, now: 10 * Self.second)) == .some(nil))
    }

    @Test func perMinuteRates() {
        var ledger = ledger("limit rate 2/m total")
        #expect(admitted(ledger.admit(facts(), now: 0)) != nil)
        #expect(admitted(ledger.admit(facts(), now: 0)) != nil)
        #expect(refusal(ledger.admit(facts(), now: 29 * Self.second)) != nil)
        #expect(admitted(ledger.admit(facts(), now: 30 * Self.second)) != nil)
    }

    @Test func conditionsChooseWhatIsCounted() {
        var ledger = ledger("limit udp sessions 1 per client from 10.0.0.0/8 version socks5")
        #expect(admitted(ledger.admit(facts(.socks5, .udp), now: 0)) != nil)
        #expect(refusal(ledger.admit(facts(.socks5, .udp), now: 0)) != nil)
        #expect(admitted(ledger.admit(facts(.socks5, .connect), now: 0)) == .some(nil))
        #expect(admitted(ledger.admit(facts(.socks5, .udp, from: "192.0.2.1"), now: 0)) == .some(nil))
    }

    @Test func openSessionsStayCountedUnderReloadedLimits() throws {
        var ledger = ledger("limit sessions 3 per client")
        let leases = (0..<3).compactMap { _ in admitted(ledger.admit(facts(), now: 0)) ?? nil }
        #expect(leases.count == 3)
        // Lowered below what is open: nothing is cut, nothing new is admitted.
        ledger = ledger.adopting(policy("allow from any\nlimit sessions 2 per client").limits)
        #expect(ledger.openSessions == 3)
        #expect(refusal(ledger.admit(facts(), now: 0)) != nil)
        ledger.release(leases[0])
        #expect(refusal(ledger.admit(facts(), now: 0)) != nil, "3 open - 1 = 2: still at the limit")
        ledger.release(leases[1])
        #expect(admitted(ledger.admit(facts(), now: 0)) != nil)
        // Limits removed: the old leases count nothing and are forgotten.
        ledger = ledger.adopting([])
        #expect(ledger.openSessions == 0)
        ledger.release(leases[2])
    }

    @Test func fullBucketsAreSweptSoMemoryFollowsRecentClients() {
        var ledger = ledger("limit rate 5/s per client")
        for n in 0..<5000 {
            _ = ledger.admit(facts(from: "10.0.\(n / 250).\(n % 250)"), now: 0)
        }
        // A minute later, each new client finds the old buckets refilled and swept.
        for n in 0..<2000 {
            _ = ledger.admit(facts(from: "10.1.\(n / 250).\(n % 250)"), now: 60 * Self.second)
        }
        #expect(ledger.bucketCount <= 2048)
    }

    // MARK: The language

    @Test(arguments: [
        ("limit sessions 0 per client", "1:16: error: a limit of 0 admits nothing: write a deny rule instead"),
        ("limit sessions -3 per client", "1:16: error: '-3' is not a whole number"),
        ("limit sessions 2000000 total", "1:16: error: '2000000' is more than a limit may be (at most 1000000)"),
        ("limit sessions 10 per host", "1:23: error: 'per host': a limit counts per client, per user, or in total"),
        ("limit sessions 10", "1:18: error: expected 'per client', 'per user' or 'total' at the end of the line"),
        ("limit rate 10/h per client", "1:12: error: '10/h' is not a rate"),
        ("limit speed 10 per client", "1:7: error: expected 'sessions' or 'rate' after 'limit'"),
        ("limit sessions 10 per client to any", "1:30: error: 'to' is not a condition of a limit"),
        ("limit sessions 10 per client ident", "1:30: error: 'ident' is not a condition of a limit"),
        ("limit sessions 10 total form 10.0.0.0/8", "1:25: error: unknown condition 'form' (did you mean 'from'?)"),
        ("expect allow from 10.0.0.1 to a.example:1 open many", "1:48: error: 'many' is not a number of sessions"),
    ])
    func errors(text: String, expected: String) {
        let found = diagnostics(text)
        #expect(found.first?.hasPrefix(expected) == true, "\(found)")
    }

    @Test(arguments: [
        ("allow from any\nlimit sessions 10 total\nlimit sessions 20 per client",
         "3:7: warning: this limit can never be reached: the limit on line 2 (10 open sessions in total) counts every session this one does and is reached first"),
        ("allow from any\nlimit sessions 10 per client\nlimit sessions 10 per client",
         "3:7: warning: this limit can never be reached: the limit on line 2"),
        ("allow from any\nlimit rate 5/s total\nlimit rate 300/m per user",
         "3:7: warning: this limit can never be reached: the limit on line 2 (5 new sessions a second in total)"),
        ("allow from any\nlimit sessions 5 per user version socks5 auth none",
         "2:18: warning: this limit can never be reached: a SOCKS5 request without a password claims no user"),
        ("allow from 10.0.0.0/8\nlimit connect sessions 5 per client from 192.168.0.0/16",
         "2:1: warning: this limit can never be reached: no allow rule admits a session it counts"),
    ])
    func unreachableLimitsAreLinted(text: String, expected: String) {
        let found = diagnostics(text)
        #expect(found.contains { $0.hasPrefix(expected) }, "\(found)")
    }

    @Test func limitsThatCanBeReachedAreNotLinted() {
        let text = """
            allow from 10.0.0.0/8
            limit sessions 64 per client
            limit sessions 8000 total
            limit sessions 32 per client from 10.1.0.0/16
            limit rate 20/s per client
            limit rate 600/m per client
            limit udp sessions 4 per client from 192.168.0.0/16
            """
        #expect(diagnostics(text) == [])
    }

    @Test func expectationsPoseTheLoad() async {
        let text = """
            allow from 10.0.0.0/8 label "staff"
            deny from any
            limit sessions 2 per client label "two"
            limit rate 5/s per client
            expect allow from 10.1.1.1 to a.example:443 open 1
            expect limit from 10.1.1.1 to a.example:443 open 2
            expect limit from 10.1.1.1 to a.example:443 recent 5
            expect deny from 192.0.2.1 to a.example:443 open 2
            expect limit from 10.1.1.1 to a.example:443 open 1
            """
        let compiled = policy(text)
        let report = await ExpectationReport.run(compiled)
        #expect(report.passed == 4)
        let failure = report.failures.first
        #expect(failure?.expectation.line == 9)
        #expect(failure?.decision.verdict == .allow)

        let engine = PolicyEngine(policy: compiled)
        let request = facts(from: "10.1.1.1")
        let allowed = await engine.decide(request, identLookup: nil)
        let limited = engine.applyingLimits(to: allowed, request, open: 2, recent: 0)
        #expect(limited.limit != nil)
        guard case .deny(.limitReached(let refusal)) = limited.outcome else {
            Issue.record("not refused by a limit")
            return
        }
        #expect(refusal.subject == .client(IPAddress("10.1.1.1")!))
        #expect(limited.rule?.label == "staff", "the allowing rule stays named")
        #expect(limited.limit?.label == "two")
        #expect(limited.trace.last?.reason == "limit reached: 2 open sessions per client (client 10.1.1.1)")
    }
}
