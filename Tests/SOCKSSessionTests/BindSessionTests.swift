import AccessPolicy
import NetAddress
import SOCKSSession
import SOCKSWire
import Testing

/// Every transition of `BindSession`, and every event arriving late.
@Suite struct BindSessionTests {
    let peer = IPEndpoint("192.0.2.1:20")!
    let listening = IPEndpoint("10.0.0.1:50000")!

    func waitingForPeer(version: RequestFacts.Version = .socks5, destination: IPAddress = a1) -> BindSession {
        var session = BindSession(facts: facts(.address(destination), command: .bind, version: version))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        _ = session.listening(at: listening)
        return session
    }

    @Test func fullPath() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        guard case .decide(let decided, nil) = session.start() else {
            Issue.record("no decision")
            return
        }
        #expect(decided.resolvedAddress == a1)
        #expect(session.decided(allow, recordPending: false) == .listen(toward: a1))
        #expect(session.listening(at: listening) == .sendListeningReply(listening))
        guard case .decide(let peerFacts, BindSession.peerDecisionStep) = session.peerArrived(from: peer) else {
            Issue.record("the peer is not decided")
            return
        }
        #expect(peerFacts.destination == .address(peer.address))
        #expect(session.decided(allow, recordPending: false) == .startRelay(peer: peer))
    }

    /// A client that resets while its listener waits: the end is recorded once.
    @Test func clientLeavingWhileThePeerIsAwaitedRecordsTheEnd() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        _ = session.listening(at: listening)
        #expect(session.clientLeft() == .abandon(recordEnd: true))
        #expect(session.clientLeft() == .none)
        #expect(session.peerArrived(from: peer) == .closePeer)
    }

    @Test func hostNameIsResolvedFirst() {
        var session = BindSession(facts: facts(.hostName("ftp.example"), command: .bind))
        #expect(session.start() == .resolve("ftp.example"))
        guard case .decide(let decided, nil) = session.resolved([a2, a1]) else {
            Issue.record("no decision")
            return
        }
        #expect(decided.resolvedAddress == a2)
    }

    @Test func refusedRequest() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        #expect(session.decided(deny, recordPending: false) == .fail(.notAllowed, recordEnd: false))
    }

    @Test func refusedPeerRecordsTheEnd() {
        var session = waitingForPeer()
        _ = session.peerArrived(from: peer)
        #expect(session.decided(deny, recordPending: false) == .fail(.notAllowed, recordEnd: true))
    }

    @Test func socks4PeerMustBeTheNamedHost() {
        var session = waitingForPeer(version: .socks4, destination: a2)
        #expect(session.peerArrived(from: peer) == .fail(.notAllowed, recordEnd: true))
        var any = waitingForPeer(version: .socks4, destination: .v4(.any))
        guard case .decide = any.peerArrived(from: peer) else {
            Issue.record("0.0.0.0 means any peer")
            return
        }
    }

    @Test func socks5PeerMayBeAnyHost() {
        var session = waitingForPeer(version: .socks5, destination: a2)
        guard case .decide = session.peerArrived(from: peer) else {
            Issue.record("SOCKS5 leaves the peer to the policy")
            return
        }
    }

    @Test func listenFailure() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        #expect(session.listenFailed() == .fail(.generalFailure, recordEnd: true))
    }

    @Test func noPeerInTime() {
        var session = waitingForPeer()
        #expect(session.peerTimedOut() == .fail(.timedOut, recordEnd: true))
        #expect(session.peerArrived(from: peer) == .closePeer, "a peer after the time-out")
    }

    @Test func clientEOFWhileWaitingForThePeerCloses() {
        var session = waitingForPeer()
        #expect(session.clientSentEOF() == .abandon(recordEnd: true), "its request was allowed")
        #expect(session.isEnded)
    }

    /// A BIND client has nothing to send before the second reply: EOF at any point
    /// before it means the client has gone.
    @Test func clientEOFWhileDecidingEndsTheSession() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        #expect(session.clientSentEOF() == .abandon(recordEnd: false), "nothing allowed yet")
        #expect(session.decided(allow, recordPending: false) == .none)
    }

    @Test func relayWaitsForBothAuditRecords() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        _ = session.decided(allow, recordPending: true)
        _ = session.listening(at: listening)
        _ = session.peerArrived(from: peer)
        #expect(session.decided(allow, recordPending: true) == .none)
        #expect(session.auditRecordWritten() == .none)
        #expect(session.auditRecordWritten() == .startRelay(peer: peer))
    }

    @Test func auditFailureEndsWithoutRecord() {
        var session = waitingForPeer()
        #expect(session.auditRecordFailed() == .fail(.generalFailure, recordEnd: false))
    }

    @Test func decisionDeadlineForEitherDecision() {
        var first = BindSession(facts: facts(.address(a1), command: .bind))
        _ = first.start()
        #expect(first.decisionTimedOut() == .fail(.generalFailure, recordEnd: false))
        var second = waitingForPeer()
        _ = second.peerArrived(from: peer)
        #expect(second.decisionTimedOut() == .fail(.generalFailure, recordEnd: true))
    }

    // MARK: Late events

    @Test func lateListenerIsClosed() {
        var session = BindSession(facts: facts(.address(a1), command: .bind))
        _ = session.start()
        _ = session.decided(allow, recordPending: false)
        session.clientLeft()
        #expect(session.listening(at: listening) == .closeListener)
        #expect(session.listenFailed() == .none)
    }

    @Test func latePeerIsClosed() {
        var session = waitingForPeer()
        session.clientLeft()
        #expect(session.peerArrived(from: peer) == .closePeer)
        #expect(session.peerTimedOut() == .none)
    }

    @Test func lateDecisionsAndRecords() {
        var session = waitingForPeer()
        _ = session.peerArrived(from: peer)
        session.clientLeft()
        #expect(session.decided(allow, recordPending: false) == .none)
        #expect(session.decisionTimedOut() == .none)
        #expect(session.auditRecordWritten() == .none)
        #expect(session.auditRecordFailed() == .none)
        #expect(session.resolved([a1]) == .none)
        #expect(session.clientSentEOF() == .none)
    }
}
