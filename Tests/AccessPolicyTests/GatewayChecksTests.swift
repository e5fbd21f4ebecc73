import ProxyURL
import Testing

@testable import AccessPolicy

/// The refusals after the rules that are still the policy's, made in the engine's module
/// (issue 24: the gateway built these decisions itself).
@Suite struct GatewayChecksTests {
    let allowed = Decision(.allow(route: nil), rule: RuleReference(line: 3, label: "any"), trace: [])

    @Test func aLoopThroughTheGatewayIsRefusedUnlessTheRuleNamesIt() {
        let request = facts(to: "127.0.0.1:1080")
        let refused = allowed.checked(request, destinationIsGateway: true)
        #expect(refused.outcome == .deny(.destinationIsGateway))
        #expect(refused.rule?.line == 3, "the allowing rule stays named")
        #expect(refused.trace.last?.reason == "refused: the destination is the gateway itself")
        #expect(refused.refusal?.reason == "refused: the destination is the gateway itself")
        var named = allowed
        named.ruleNamesDestination = true
        #expect(named.checked(request, destinationIsGateway: true).outcome == .allow(route: nil))
        #expect(allowed.checked(request, destinationIsGateway: false) == allowed)
    }

    @Test func udpThroughParentsNeedsASOCKS5Parent() throws {
        let socks4 = try SOCKSURL.parse("socks4://gw:1080")
        let socks5 = try SOCKSURL.parse("socks5://gw:1080")
        let udp = facts(.socks5, .udp, to: "192.0.2.1:53")
        let viaSOCKS4 = Decision(.allow(route: [socks4]), rule: RuleReference(line: 1), trace: [])
        #expect(viaSOCKS4.checked(udp, destinationIsGateway: false).outcome == .deny(.notChainable))
        let viaBoth = Decision(.allow(route: [socks4, socks5]), rule: RuleReference(line: 1), trace: [])
        #expect(viaBoth.checked(udp, destinationIsGateway: false) == viaBoth)
        // CONNECT goes through a SOCKS4 parent as it is.
        #expect(viaSOCKS4.checked(facts(to: "192.0.2.1:80"), destinationIsGateway: false) == viaSOCKS4)
    }

    @Test func aDenyStaysAsItIs() {
        let denied = Decision(.deny(.identMismatch), rule: RuleReference(line: 2), trace: [])
        #expect(denied.checked(facts(to: "127.0.0.1:1080"), destinationIsGateway: true) == denied)
    }

    /// Every refusal has its reply; none encodes as granted (a deny needs its reason).
    @Test func everyRefusalIsADenyWithItsWords() {
        let limit = LimitRefusal(
            limit: SessionLimit(.sessions(1), .client, reference: RuleReference(line: 9)), subject: .total)
        let refusals: [Decision.Refusal] = [
            .notAllowed, .identUnreachable, .identMismatch, .limitReached(limit), .notChainable, .destinationIsGateway, .timedOut,
        ]
        for refusal in refusals {
            let decision = Decision(.deny(refusal), rule: nil, trace: [])
            #expect(decision.verdict == .deny)
            #expect(decision.route == nil)
        }
        #expect(Decision.timedOut.refusal?.reason == "decision timed out")
        #expect(Decision.limited(limit).limit?.line == 9)
    }
}
