import AccessPolicy
import NetAddress
import SOCKSSession
import SOCKSWire
import Testing

let client = IPEndpoint("10.0.0.5:40000")!
let listener = IPEndpoint("10.0.0.1:1080")!
let allow = Decision(.allow(route: nil), rule: RuleReference(line: 1), trace: [])
let deny = Decision(.deny(.notAllowed), rule: RuleReference(line: 2), trace: [])
let identDeny = Decision(.deny(.identMismatch), rule: nil, trace: [])

func facts(_ destination: RequestFacts.Destination, command: RequestFacts.Command = .connect, version: RequestFacts.Version = .socks5)
    -> RequestFacts
{
    RequestFacts(
        version: version, command: command, client: client, listener: listener, destination: destination, destinationPort: 443)
}

let a1 = IPAddress("192.0.2.1")!
let a2 = IPAddress("192.0.2.2")!
let a3 = IPAddress("2001:db8::3")!

/// Every transition of `ConnectSession`, and every event arriving late.
@Suite struct ConnectSessionTests {
    @Test func addressIsDecidedAtOnceThenConnectedAndRelayed() {
        var session = ConnectSession(facts: facts(.address(a1)))
        guard case .decide(let decided) = session.start() else {
            Issue.record("no decision")
            return
        }
        #expect(decided.destinationAddress == a1)
        #expect(session.decided(allow, recordPending: false) == .connect(IPEndpoint(address: a1, port: 443)))
        #expect(session.connected() == .startRelay)
        #expect(session.ledger.allowed)
    }

    @Test func hostNameIsResolvedThenEachAddressDecidedBeforeItsConnect() {
        var session = ConnectSession(facts: facts(.hostName("www.example")))
        #expect(session.start() == .resolve("www.example"))
        guard case .decide(let first) = session.resolved([a1, a2]) else {
            Issue.record("no decision")
            return
        }
        #expect(first.resolvedAddress == a1)
        #expect(session.decided(allow, recordPending: false) == .connect(IPEndpoint(address: a1, port: 443)))
        guard case .decide(let second) = session.connectFailed(.connectionRefused) else {
            Issue.record("the second address is not decided")
            return
        }
        #expect(second.resolvedAddress == a2)
        #expect(session.decided(allow, recordPending: false) == .connect(IPEndpoint(address: a2, port: 443)))
        #expect(session.connectFailed(.timedOut) == .fail(.timedOut, recordEnd: true), "the last failure is the reply")
        #expect(session.isEnded)
    }

    @Test func atMostFourAddressesAreTried() {
        var session = ConnectSession(facts: facts(.hostName("many.example")))
        _ = session.start()
        let addresses = (1...9).map { IPAddress("192.0.2.\($0)")! }
        var action = session.resolved(addresses)
        var connects = 0
        while case .decide = action {
            guard case .connect = session.decided(allow, recordPending: false) else { break }
            connects += 1
            action = session.connectFailed(.connectionRefused)
        }
        #expect(connects == ConnectSession.maxAddressesTried)
        #expect(action == .fail(.connectionRefused, recordEnd: true))
    }

    @Test func laterAddressRefusedAfterAFailureRepliesTheFailure() {
        var session = ConnectSession(facts: facts(.hostName("two.example")))
        _ = session.start()
        _ = session.resolved([a1, a3])
        _ = session.decided(allow, recordPending: false)
        _ = session.connectFailed(.hostUnreachable)
        #expect(session.decided(deny, recordPending: false) == .fail(.hostUnreachable, recordEnd: true))
    }

    @Test func refusalRepliesWithTheRefusalAndRecordsNoEnd() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        #expect(session.decided(identDeny, recordPending: false) == .fail(.identMismatch, recordEnd: false))
    }

    @Test func nameThatDoesNotResolveIsDecidedThenHostUnreachable() {
        var session = ConnectSession(facts: facts(.hostName("nowhere.example")))
        _ = session.start()
        guard case .decide(let unresolved) = session.resolved([]) else {
            Issue.record("an unresolved name is still decided")
            return
        }
        #expect(unresolved.resolvedAddress == nil)
        #expect(session.decided(allow, recordPending: false) == .fail(.hostUnreachable, recordEnd: true))
    }

    @Test func relayWaitsForThePendingAuditRecord() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: true)
        #expect(session.connected() == .none, "connected, but the record is not written yet")
        #expect(session.auditRecordWritten() == .startRelay)
    }

    @Test func auditRecordWrittenBeforeTheConnectCompletes() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: true)
        #expect(session.auditRecordWritten() == .none)
        #expect(session.connected() == .startRelay)
    }

    @Test func everyAttemptsRecordIsAwaited() {
        var session = ConnectSession(facts: facts(.hostName("two.example")))
        _ = session.start()
        _ = session.resolved([a1, a2])
        _ = session.decided(allow, recordPending: true)
        _ = session.connectFailed(.connectionRefused)
        _ = session.decided(allow, recordPending: true)
        #expect(session.connected() == .none)
        #expect(session.auditRecordWritten() == .none, "one of two records written")
        #expect(session.auditRecordWritten() == .startRelay)
    }

    @Test func auditRecordThatCannotBeWrittenRefusesWithoutASessionEnd() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: true)
        _ = session.connected()
        #expect(session.auditRecordFailed() == .fail(.generalFailure, recordEnd: false))
        #expect(session.isEnded)
    }

    @Test func decisionDeadline() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        #expect(session.decisionTimedOut() == .fail(.generalFailure, recordEnd: false))
        #expect(session.decided(allow, recordPending: false) == .none, "the decision after its deadline")
    }

    @Test func deadlineAfterTheDecisionIsIgnored() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        #expect(session.decisionTimedOut() == .none)
        #expect(session.connected() == .startRelay)
    }

    @Test func halfCloseAfterDataIsKeptForTheRelay() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        #expect(session.clientSentEOF(afterData: true) == .none)
        #expect(session.decided(allow, recordPending: false) == .connect(IPEndpoint(address: a1, port: 443)))
    }

    @Test func eofWithoutDataBeforeTheReplyMeansTheClientLeft() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        #expect(session.clientSentEOF(afterData: false) == .abandon(recordEnd: true))
        #expect(session.connected() == .closeOutbound, "the attempt that completes anyway is closed")
        var undecided = ConnectSession(facts: facts(.hostName("slow.example")))
        _ = undecided.start()
        #expect(undecided.clientSentEOF(afterData: false) == .abandon(recordEnd: false))
        #expect(undecided.resolved([a1]) == .none)
    }

    @Test func eofDuringTheRelayIsTheRelays() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        _ = session.connected()
        #expect(session.clientSentEOF(afterData: false) == .none)
    }

    // MARK: Late events, after the client left

    /// However the client's connection closes before the relay (a reset reaches the
    /// handler as an error, not as EOF), an allowed session's end is to be recorded, once;
    /// after the relay took over, the relay records it.
    @Test func clientLeavingBeforeTheRelayAbandonsOnceAndRecordsTheEndIfAllowed() {
        var connecting = ConnectSession(facts: facts(.address(a1)))
        _ = connecting.start()
        _ = connecting.decided(allow, recordPending: false)
        #expect(connecting.clientLeft() == .abandon(recordEnd: true))
        #expect(connecting.clientLeft() == .none)
        #expect(connecting.connected() == .closeOutbound)

        var deciding = ConnectSession(facts: facts(.address(a1)))
        _ = deciding.start()
        #expect(deciding.clientLeft() == .abandon(recordEnd: false))
        #expect(deciding.decided(allow, recordPending: false) == .none)

        var relaying = ConnectSession(facts: facts(.address(a1)))
        _ = relaying.start()
        _ = relaying.decided(allow, recordPending: false)
        _ = relaying.connected()
        #expect(relaying.clientLeft() == .none)
    }

    @Test func lateResolution() {
        var session = ConnectSession(facts: facts(.hostName("slow.example")))
        _ = session.start()
        session.clientLeft()
        #expect(session.resolved([a1]) == .none)
    }

    @Test func lateDecision() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        session.clientLeft()
        #expect(session.decided(allow, recordPending: true) == .none)
        #expect(session.decisionTimedOut() == .none)
    }

    @Test func lateConnectIsClosed() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        session.clientLeft()
        #expect(session.connected() == .closeOutbound)
        #expect(session.connectFailed(.connectionRefused) == .none)
    }

    @Test func lateAuditCompletion() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: true)
        _ = session.connected()
        session.clientLeft()
        #expect(session.auditRecordWritten() == .none)
        #expect(session.auditRecordFailed() == .none)
    }

    @Test func eventsBeforeStartDoNothing() {
        var session = ConnectSession(facts: facts(.address(a1)))
        #expect(session.resolved([a1]) == .none)
        #expect(session.decided(allow, recordPending: false) == .none)
        #expect(session.connected() == .closeOutbound)
        #expect(session.connectFailed(.timedOut) == .none)
        #expect(session.auditRecordWritten() == .none)
        #expect(session.start() != .none)
        #expect(session.start() == .none, "started once only")
    }

    @Test func secondConnectedAfterRelayClosesTheExtraConnection() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        #expect(session.connected() == .startRelay)
        #expect(session.connected() == .closeOutbound)
    }
}

/// The decide-then-record path's reports, as the handlers feed them.
@Suite struct DecisionEventTests {
    @Test func eventsInTheOrderTheDeciderReportsThem() {
        var session = ConnectSession(facts: facts(.address(a1)))
        _ = session.start()
        #expect(session.received(.decided(allow, recordPending: true)) == .connect(IPEndpoint(address: a1, port: 443)))
        #expect(session.connected() == .none)
        #expect(session.received(.recordWritten) == .startRelay)
        var failed = ConnectSession(facts: facts(.address(a1)))
        _ = failed.start()
        _ = failed.received(.decided(allow, recordPending: true))
        #expect(failed.received(.recordFailed) == .fail(.generalFailure, recordEnd: false))
        var late = BindSession(facts: facts(.address(a1), command: .bind))
        _ = late.start()
        #expect(late.received(.timedOut) == .fail(.generalFailure, recordEnd: false))
        #expect(late.received(.decided(allow, recordPending: false)) == .none)
    }
}

/// The bridge from the wire's vocabulary to the policy's.
@Suite struct VocabularyTests {
    @Test func refusalsBecomeEachProtocolsCode() {
        #expect(identDeny.replyCode(for: .socks4) == 93)
        #expect(identDeny.replyCode(for: .socks5) == 0x02)
        #expect(Decision(.deny(.identUnreachable), rule: nil, trace: []).replyCode(for: .socks4a) == 92)
        #expect(allow.replyCode(for: .socks4) == 90)
        #expect(allow.replyCode(for: .socks5) == 0)
    }

    @Test func errnoBecomesAFailure() {
        #expect(SOCKSRequestFailure(errno: 111) == .connectionRefused)  // ECONNREFUSED
        #expect(SOCKSRequestFailure(errno: 101) == .networkUnreachable)  // ENETUNREACH
        #expect(SOCKSRequestFailure(errno: 113) == .hostUnreachable)  // EHOSTUNREACH
        #expect(SOCKSRequestFailure(errno: 110) == .timedOut)  // ETIMEDOUT
        #expect(SOCKSRequestFailure(errno: 1) == .generalFailure)
    }

    @Test func requestBecomesFacts() {
        let request = SOCKSRequest(
            version: .socks4a, command: .bind, host: .domain("h.example"), port: 21, claimedUser: "bob", authMethod: nil)
        let facts = RequestFacts(request, client: client, listener: listener, time: 7)
        #expect(facts.version == .socks4a)
        #expect(facts.command == .bind)
        #expect(facts.destination == .hostName("h.example"))
        #expect(facts.claimedUser == "bob")
        #expect(facts.authMethod == RequestFacts.AuthMethod.none)
        #expect(facts.time == 7)
        let udp = SOCKSRequest(
            version: .socks5, command: .udpAssociate, host: .ipv4(.any), port: 0, authMethod: .usernamePassword)
        #expect(RequestFacts(udp, client: client, listener: listener, time: nil).authMethod == .password)
        #expect(RequestFacts(udp, client: client, listener: listener, time: nil).command == .udp)
    }
}
