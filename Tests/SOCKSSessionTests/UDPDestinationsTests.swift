import AccessPolicy
import NetAddress
import ProxyURL
import SOCKSSession
import Testing

/// A UDP association's decisions without a socket (issue 24: they lived in the class
/// that owns the sockets): each destination decided once, one decision in flight, a rate
/// of new ones, reloads, names, the parent's route, and what may answer.
@Suite struct UDPDestinationsTests {
    let a = IPEndpoint("192.0.2.1:53")!
    let b = IPEndpoint("192.0.2.2:53")!

    @Test func aDestinationIsDecidedOnceThenSentAsDecided() {
        var table = UDPDestinations()
        #expect(table.send(to: a, policyGeneration: 1, second: 0) == .decide)
        // While its decision runs, more datagrams to it are dropped (pending).
        #expect(table.send(to: a, policyGeneration: 1, second: 0) == .drop)
        #expect(table.counts.pending == 1)
        #expect(table.decided(a, allow).send == .direct)
        #expect(table.send(to: a, policyGeneration: 1, second: 0) == .direct)
        #expect(table.expectsReply(from: a, viaParent: false))
        #expect(!table.expectsReply(from: b, viaParent: false), "only destinations it sent to answer")
        #expect(table.send(to: b, policyGeneration: 1, second: 0) == .decide)
        #expect(table.decided(b, deny).send == .drop)
        #expect(table.send(to: b, policyGeneration: 1, second: 0) == .drop)
        #expect(table.counts.denied == 2)
        // A reload decides every destination again.
        #expect(table.send(to: a, policyGeneration: 2, second: 0) == .decide)
    }

    @Test func newDestinationsAreDecidedAtABoundedRate() {
        var table = UDPDestinations()
        let limit = UDPDestinations.Limits.decisionsPerSecond
        for port in 0..<limit {
            #expect(table.send(to: IPEndpoint(address: a.address, port: UInt16(port + 1)), policyGeneration: 0, second: 7) == .decide)
        }
        #expect(table.send(to: IPEndpoint(address: a.address, port: 9999), policyGeneration: 0, second: 7) == .drop)
        #expect(table.counts.overRate == 1)
        #expect(table.send(to: IPEndpoint(address: a.address, port: 9999), policyGeneration: 0, second: 8) == .decide)
    }

    @Test func namesAreResolvedOnceAtATime() {
        var table = UDPDestinations()
        #expect(table.lookUp("dns.example") == .resolve)
        #expect(table.lookUp("dns.example") == .drop)
        table.resolved("dns.example", to: a.address)
        #expect(table.lookUp("dns.example") == .known(a.address))
        #expect(table.lookUp("nowhere.example") == .resolve)
        table.resolved("nowhere.example", to: nil)
        #expect(table.lookUp("nowhere.example") == .known(nil))
    }

    @Test func theFirstViaRuleChoosesTheParentAndOthersAreNotServed() throws {
        let first = [try SOCKSURL.parse("socks5://gw1:1080")]
        let other = [try SOCKSURL.parse("socks5://gw2:1080")]
        var table = UDPDestinations()
        _ = table.send(to: a, policyGeneration: 0, second: 0)
        let decided = table.decided(a, Decision(.allow(route: first), rule: RuleReference(line: 1), trace: []))
        #expect(decided.send == .viaParent)
        #expect(decided.parentToStart == first)
        #expect(table.parent == .connecting(route: first))
        _ = table.send(to: b, policyGeneration: 0, second: 0)
        let elsewhere = table.decided(b, Decision(.allow(route: other), rule: RuleReference(line: 2), trace: []))
        #expect(elsewhere.send == .drop, "a rule naming another parent is not served, nor sent directly")
        #expect(elsewhere.parentToStart == nil)
        table.parentAssociated()
        #expect(table.parent == .ready(route: first))
        #expect(table.expectsReply(from: a, viaParent: true))
        #expect(!table.expectsReply(from: a, viaParent: false))
    }

    @Test func aFailedRecordOrADeadlineDecidesAgainLater() {
        var table = UDPDestinations()
        _ = table.send(to: a, policyGeneration: 0, second: 0)
        _ = table.decided(a, allow)
        table.recordFailed(a)
        #expect(table.recordWritten(a) == .drop)
        #expect(table.send(to: a, policyGeneration: 0, second: 0) == .decide)
        table.decisionTimedOut(a)
        #expect(table.send(to: a, policyGeneration: 0, second: 0) == .decide)
        #expect(table.counts.denied == 2)
    }
}
