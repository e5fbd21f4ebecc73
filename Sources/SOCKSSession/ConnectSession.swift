import AccessPolicy
import NetAddress
import ProxyURL
import SOCKSWire

/// A CONNECT request's life after negotiation: resolve (a host name) → decide → connect
/// (attempt n of at most `maxAddressesTried`, each address decided before it is used) →
/// wait for the decision's audit record → relay → ended.
///
/// A pure value: the driver (a channel handler) feeds it events and carries out the
/// action each returns. Every event is accepted in every state: one that comes late (a
/// resolution, decision, connect or audit write finishing after the client left, a
/// deadline, or another attempt) gets `.none`, or `.closeOutbound` for a connection
/// nobody wants any more. Nothing here traps.
public struct ConnectSession: Sendable {
    /// A name may resolve to several addresses (say ::1 and 127.0.0.1); like any client
    /// the gateway tries them in order, deciding each before it connects, so a CIDR rule
    /// always sees the address actually used.
    public static let maxAddressesTried = 4

    public enum Action: Hashable, Sendable {
        case none
        /// Resolve this name, then `resolved(_:)`.
        case resolve(String)
        /// Decide (and record) these facts, then `decided(_:recordPending:)` or
        /// `decisionTimedOut()`.
        case decide(RequestFacts)
        /// Connect to this endpoint, then `connected()` or `connectFailed(_:)`.
        case connect(IPEndpoint)
        /// Through the allowing rule's parents (`via`), tried in order, asking the first
        /// that answers for this destination: a name when the parent resolves
        /// (socks4a, socks5h), else the address decided on.
        case connectVia([SOCKSURL], SOCKSHost, UInt16)
        /// Send the success reply (the outbound socket's local address) and hand both
        /// connections to the relay.
        case startRelay
        /// Send this reply and close both connections. `recordEnd`: an allowed decision
        /// was recorded, so the session's end is recorded too.
        case fail(SOCKSRequestFailure, recordEnd: Bool)
        /// An outbound connection completed that nobody waits for: close it.
        case closeOutbound
        /// The client has gone before its reply: end the attempt and close its connection
        /// without a reply. `recordEnd`: as for `fail`.
        case abandon(recordEnd: Bool)
    }

    private enum State: Hashable, Sendable {
        case idle
        case resolving
        /// `candidates.first` is being decided; `previousFailure` is why the attempt
        /// before it failed, which the client hears if this one is refused.
        case deciding(candidates: ArraySlice<IPAddress>, previousFailure: SOCKSRequestFailure?)
        case connecting(candidates: ArraySlice<IPAddress>)
        /// Connected; an allowed decision's audit record is still being written.
        case awaitingAuditRecord
        case relaying
        case ended
    }

    public let facts: RequestFacts
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
            return decide([address][...], previousFailure: nil)
        }
    }

    public mutating func resolved(_ addresses: [IPAddress]) -> Action {
        guard state == .resolving else { return .none }
        // A name that does not resolve is still decided (a rule may name it) and
        // recorded; if allowed, the client hears "host unreachable".
        return decide(addresses.prefix(Self.maxAddressesTried), previousFailure: nil)
    }

    private mutating func decide(_ candidates: ArraySlice<IPAddress>, previousFailure: SOCKSRequestFailure?) -> Action {
        state = .deciding(candidates: candidates, previousFailure: previousFailure)
        var attempt = facts
        attempt.resolvedAddress = candidates.first
        return .decide(attempt)
    }

    /// `recordPending`: the decision's audit record is being written and the relay must
    /// wait for it (`auditRecordWritten`).
    public mutating func decided(_ decision: Decision, recordPending: Bool) -> Action {
        guard case .deciding(let candidates, let previousFailure) = state else { return .none }
        guard decision.verdict == .allow else {
            // After a failed attempt, a later address the policy refuses ends the search;
            // the client hears why the allowed attempt failed.
            return fail(previousFailure ?? SOCKSRequestFailure(decision.refusal ?? .notAllowed))
        }
        ledger.allowed(recordPending: recordPending)
        if let route = decision.route, let parent = route.first {
            // A parent that resolves gets the name, resolved here or not: the policy
            // decided on what the gateway could know (docs/policy-language.md, "Parents").
            if case .hostName(let name) = facts.destination, parent.scheme.proxyResolves {
                state = .connecting(candidates: [])
                return .connectVia(route, .domain(name), facts.destinationPort)
            }
            guard let address = candidates.first else { return fail(.hostUnreachable) }
            state = .connecting(candidates: candidates)
            return .connectVia(route, SOCKSHost(address), facts.destinationPort)
        }
        guard let address = candidates.first else { return fail(.hostUnreachable) }
        state = .connecting(candidates: candidates)
        return .connect(IPEndpoint(address: address, port: facts.destinationPort))
    }

    /// The decision did not come within its deadline (an identd that holds it up).
    public mutating func decisionTimedOut() -> Action {
        guard case .deciding = state else { return .none }
        return fail(.generalFailure)
    }

    public mutating func connected() -> Action {
        guard case .connecting = state else { return .closeOutbound }
        guard ledger.recordsBeingWritten == 0 else {
            state = .awaitingAuditRecord
            return .none
        }
        state = .relaying
        return .startRelay
    }

    public mutating func connectFailed(_ failure: SOCKSRequestFailure) -> Action {
        guard case .connecting(let candidates) = state else { return .none }
        let rest = candidates.dropFirst()
        guard !rest.isEmpty else { return fail(failure) }
        return decide(rest, previousFailure: failure)
    }

    public mutating func auditRecordWritten() -> Action {
        guard ledger.recordWritten(), state == .awaitingAuditRecord else { return .none }
        state = .relaying
        return .startRelay
    }

    /// An allowed decision's record could not be written: nothing is relayed for it.
    public mutating func auditRecordFailed() -> Action {
        switch state {
        case .deciding, .connecting, .awaitingAuditRecord:
            ledger.recordFailed()
            return fail(.generalFailure)
        case .idle, .resolving, .relaying, .ended:
            return .none
        }
    }

    /// The client shut down its sending side before the reply. After bytes beyond the
    /// request (`printf 'request+data' | nc`), that is a half-close, passed on by the
    /// relay. With none, TCP cannot tell it from a client that closed and left, and the
    /// gateway takes it as gone: the attempt ends now instead of at `--connect-timeout`.
    public mutating func clientSentEOF(afterData: Bool) -> Action {
        switch state {
        case .idle, .resolving, .deciding, .connecting, .awaitingAuditRecord:
            guard !afterData else { return .none }
            state = .ended
            return .abandon(recordEnd: ledger.allowed)
        case .relaying, .ended:
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
        case .idle, .resolving, .deciding, .connecting, .awaitingAuditRecord:
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
