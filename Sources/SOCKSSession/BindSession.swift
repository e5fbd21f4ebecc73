import AccessPolicy
import NetAddress
import ProxyURL
import SOCKSWire

/// A BIND request's life after negotiation: resolve (a host name) → decide → listen →
/// first reply (the listening address) → wait for the peer → check and decide the peer
/// → wait for the audit records → second reply and relay → ended.
///
/// Pure, like `ConnectSession`: events in, actions out, late events answered with
/// `.none` (or `.closePeer` / `.closeListener` for a socket nobody wants), no traps.
public struct BindSession: Sendable {
    /// The audit record's step for the peer's decision.
    public static let peerDecisionStep = "BIND peer decision"

    public enum Action: Hashable, Sendable {
        case none
        /// Resolve this name, then `resolved(_:)`.
        case resolve(String)
        /// Decide (and record) these facts, then `decided(_:recordPending:)` or
        /// `decisionTimedOut()`; `step` names the decision in the audit log (nil: the request's).
        case decide(RequestFacts, step: String?)
        /// Listen on the local address this host would use to reach `toward` (the
        /// expected peer); on the address the client reached if there is none. Then
        /// `listening(at:)` or `listenFailed()`.
        case listen(toward: IPAddress?)
        /// Ask the allowing rule's parents (`via`) to listen instead: their first reply
        /// is `listening(at:)`, their second `peerArrived(from:)`.
        case listenVia([SOCKSURL], SOCKSHost, UInt16)
        /// Send the first reply (where the gateway listens), and wait for the peer
        /// (`peerArrived(from:)`) at most the BIND time-out (`peerTimedOut()`).
        case sendListeningReply(IPEndpoint)
        /// Send the second reply with the peer's address and hand the client's connection
        /// and the peer's to the relay.
        case startRelay(peer: IPEndpoint)
        /// Send this reply and close everything (the client, the listener, the peer).
        /// `recordEnd`: an allowed decision was recorded, so the session's end is too.
        case fail(SOCKSRequestFailure, recordEnd: Bool)
        /// A listener came up that nobody waits for.
        case closeListener
        /// A peer connected that nobody waits for.
        case closePeer
        /// The client has gone before its second reply: close everything without a reply.
        /// `recordEnd`: as for `fail`.
        case abandon(recordEnd: Bool)
    }

    private enum State: Hashable, Sendable {
        case idle
        case resolving
        case decidingRequest
        case listening
        case awaitingPeer
        case decidingPeer(IPEndpoint)
        case awaitingAuditRecord(peer: IPEndpoint)
        case relaying
        case ended
    }

    public private(set) var facts: RequestFacts
    private var state = State.idle
    public private(set) var ledger = DecisionLedger()

    public init(facts: RequestFacts) {
        self.facts = facts
    }

    public var isEnded: Bool { state == .ended }

    public mutating func start() -> Action {
        guard state == .idle else { return .none }
        switch facts.destination {
        case .hostName(let name):
            state = .resolving
            return .resolve(name)
        case .address(let address):
            facts.resolvedAddress = address
            state = .decidingRequest
            return .decide(facts, step: nil)
        }
    }

    public mutating func resolved(_ addresses: [IPAddress]) -> Action {
        guard state == .resolving else { return .none }
        facts.resolvedAddress = addresses.first
        state = .decidingRequest
        return .decide(facts, step: nil)
    }

    public mutating func decided(_ decision: Decision, recordPending: Bool) -> Action {
        switch state {
        case .decidingRequest:
            guard decision.verdict == .allow else { return fail(SOCKSRequestFailure(decision.refusal ?? .notAllowed)) }
            ledger.allowed(recordPending: recordPending)
            state = .listening
            if let route = decision.route, let parent = route.first {
                if case .hostName(let name) = facts.destination, parent.scheme.proxyResolves {
                    return .listenVia(route, .domain(name), facts.destinationPort)
                }
                return .listenVia(route, SOCKSHost(facts.destinationAddress ?? .v4(.any)), facts.destinationPort)
            }
            return .listen(toward: facts.destinationAddress)
        case .decidingPeer(let peer):
            guard decision.verdict == .allow else { return fail(SOCKSRequestFailure(decision.refusal ?? .notAllowed)) }
            ledger.allowed(recordPending: recordPending)
            guard ledger.recordsBeingWritten == 0 else {
                state = .awaitingAuditRecord(peer: peer)
                return .none
            }
            state = .relaying
            return .startRelay(peer: peer)
        case .idle, .resolving, .listening, .awaitingPeer, .awaitingAuditRecord, .relaying, .ended:
            return .none
        }
    }

    public mutating func decisionTimedOut() -> Action {
        switch state {
        case .decidingRequest, .decidingPeer: return fail(.generalFailure)
        default: return .none
        }
    }

    public mutating func listening(at address: IPEndpoint) -> Action {
        guard state == .listening else { return .closeListener }
        state = .awaitingPeer
        return .sendListeningReply(address)
    }

    public mutating func listenFailed(_ failure: SOCKSRequestFailure = .generalFailure) -> Action {
        guard state == .listening else { return .none }
        return fail(failure)
    }

    /// Through a parent: it refused or lost the peer after listening.
    public mutating func peerFailed(_ failure: SOCKSRequestFailure) -> Action {
        guard state == .awaitingPeer else { return .none }
        return fail(failure)
    }

    /// SOCKS4 demands the peer be the host the client named (DSTIP); every version asks
    /// the policy again with the peer as the destination.
    public mutating func peerArrived(from peer: IPEndpoint) -> Action {
        guard state == .awaitingPeer else { return .closePeer }
        if facts.version != .socks5, let expected = facts.destinationAddress, expected != .v4(.any),
            expected.unmapped != peer.address.unmapped
        {
            return fail(.notAllowed)
        }
        state = .decidingPeer(peer)
        var peerFacts = facts
        peerFacts.destination = .address(peer.address)
        peerFacts.resolvedAddress = nil
        return .decide(peerFacts, step: Self.peerDecisionStep)
    }

    public mutating func peerTimedOut() -> Action {
        guard state == .awaitingPeer else { return .none }
        return fail(.timedOut)
    }

    /// The client shut down its sending side. Before the second reply a BIND client has
    /// nothing to send and no protocol use for a half-close: EOF means it has gone, and
    /// the listener and any peer go with it.
    public mutating func clientSentEOF() -> Action {
        switch state {
        case .idle, .resolving, .decidingRequest, .listening, .awaitingPeer, .decidingPeer, .awaitingAuditRecord:
            state = .ended
            return .abandon(recordEnd: ledger.allowed)
        case .relaying, .ended:
            return .none
        }
    }

    public mutating func auditRecordWritten() -> Action {
        guard ledger.recordWritten(), case .awaitingAuditRecord(let peer) = state else { return .none }
        state = .relaying
        return .startRelay(peer: peer)
    }

    public mutating func auditRecordFailed() -> Action {
        switch state {
        case .decidingRequest, .listening, .awaitingPeer, .decidingPeer, .awaitingAuditRecord:
            ledger.recordFailed()
            return fail(.generalFailure)
        case .idle, .resolving, .relaying, .ended:
            return .none
        }
    }

    /// The client's connection closed, however (a reset, an error, the gateway shutting
    /// down, or the relay taking over). Before the relay, that is the client leaving: the
    /// answer is `.abandon` (the driver records the session's end if a decision allowed
    /// it, and closes what it started); after the relay took over, or once ended, `.none`.
    /// Later events find nothing to do. This is the one place every path out of a session
    /// passes, so the session-end record cannot be missed by a path nobody thought of.
    @discardableResult
    public mutating func clientLeft() -> Action {
        switch state {
        case .idle, .resolving, .decidingRequest, .listening, .awaitingPeer, .decidingPeer, .awaitingAuditRecord:
            state = .ended
            return .abandon(recordEnd: ledger.allowed)
        case .relaying, .ended:
            state = .ended
            return .none
        }
    }

    private mutating func fail(_ failure: SOCKSRequestFailure) -> Action {
        state = .ended
        return .fail(failure, recordEnd: ledger.allowed)
    }
}
