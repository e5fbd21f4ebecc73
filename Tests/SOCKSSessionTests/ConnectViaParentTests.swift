import AccessPolicy
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire
import Testing

/// CONNECT under a `via` rule: what each kind of parent is asked for.
@Suite struct ConnectViaParentTests {
    func routed(_ text: String) -> Decision {
        var decision = allow
        decision.outcome = .allow(route: [(try? SOCKSURL.parse(text)) ?? SOCKSURL(scheme: .socks5, host: .name("invalid"))])
        return decision
    }

    @Test func aParentThatResolvesGetsTheNameEvenWhenItDoesNotResolveHere() {
        var session = ConnectSession(facts: facts(.hostName("intranet.site")))
        #expect(session.start() == .resolve("intranet.site"))
        #expect(session.resolved([]) != .none, "decided on the name alone")
        let decision = routed("socks5h://site-gw:1080")
        guard case .connectVia(let route, let host, let port) = session.decided(decision, recordPending: false) else {
            Issue.record("not through the parent")
            return
        }
        #expect(route == decision.route && host == .domain("intranet.site") && port == 443)
        #expect(session.connected() == .startRelay)
    }

    @Test func aParentThatDoesNotResolveGetsTheAddressDecidedOn() {
        var session = ConnectSession(facts: facts(.hostName("www.example")))
        _ = session.start()
        _ = session.resolved([a1, a2])
        guard case .connectVia(_, let host, _) = session.decided(routed("socks5://site-gw"), recordPending: false) else {
            Issue.record("not through the parent")
            return
        }
        #expect(host == .ipv4(IPv4Address(192, 0, 2, 1)))
        // The parents all failed for this address: the next address is decided again.
        guard case .decide(let next) = session.connectFailed(.generalFailure) else {
            Issue.record("no second address")
            return
        }
        #expect(next.resolvedAddress == a2)
    }

    @Test func aNameThatDoesNotResolveAndAParentThatDoesNotEither() {
        var session = ConnectSession(facts: facts(.hostName("nowhere.example")))
        _ = session.start()
        _ = session.resolved([])
        #expect(session.decided(routed("socks4://gw"), recordPending: false) == .fail(.hostUnreachable, recordEnd: true))
    }
}

/// BIND under a `via` rule: the parent listens; its two replies drive the session.
@Suite struct BindViaParentTests {
    @Test func theParentListensAndItsPeerIsDecided() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        guard case .decide = session.start() else {
            Issue.record("no decision")
            return
        }
        var decision = allow
        decision.outcome = .allow(route: [(try? SOCKSURL.parse("socks5://site-gw")) ?? SOCKSURL(scheme: .socks5, host: .name("x"))])
        guard case .listenVia(_, let host, 443) = session.decided(decision, recordPending: false) else {
            Issue.record("not through the parent")
            return
        }
        #expect(host == .ipv4(IPv4Address(192, 0, 2, 1)))
        let parentListens = IPEndpoint("198.51.100.7:40000")!
        #expect(session.listening(at: parentListens) == .sendListeningReply(parentListens))
        guard case .decide(let peer, step: BindSession.peerDecisionStep) = session.peerArrived(from: IPEndpoint("192.0.2.1:5000")!)
        else {
            Issue.record("the peer is not decided")
            return
        }
        #expect(peer.destinationAddress == a1)
        #expect(session.peerFailed(.generalFailure) == .none, "too late: deciding already")
    }

    @Test func aParentThatLosesThePeerFailsTheSession() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        var decision = allow
        decision.outcome = .allow(route: [SOCKSURL(scheme: .socks5, host: .name("gw"))])
        _ = session.decided(decision, recordPending: false)
        _ = session.listening(at: IPEndpoint("198.51.100.7:40000")!)
        #expect(session.peerFailed(.connectionRefused) == .fail(.connectionRefused, recordEnd: true))
    }
}
