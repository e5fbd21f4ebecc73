import AccessPolicy
import AuditLog
import NIOCore
import NetAddress
import PosixEndpoint
import SOCKSSession
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// A host name's lookup under way on a direct connection: what `begin` knew, for the
/// decision when the addresses come, or for a hand-over to SwiftNIO if the decision cannot
/// be made here.
struct PendingResolution {
    let frontDoor: FrontDoor
    let httpRequest: HTTPRequestLine?
    /// The negotiation before the request, as a hand-over resumes it.
    let before: DirectConnection.Snapshot
    /// How many of `received`'s bytes `before.bytes` already holds (those after the
    /// request); what the client sends during the lookup comes after them.
    let earlyBytes: Int

    /// `before`, with what the client sent after it: a hand-over passes on every byte read.
    func snapshot(received: ByteBuffer?) -> DirectConnection.Snapshot {
        guard var later = received, later.readableBytes > earlyBytes else { return before }
        later.moveReaderIndex(forwardBy: earlyBytes)
        var bytes = before.bytes
        bytes.writeBuffer(&later)
        return (before.machine, bytes, before.atStart)
    }
}

/// A CONNECT's start on a direct loop, SOCKS's or HTTP's: a host name is looked up on the
/// resolver's pool, as SwiftNIO's sessions do (the loop goes on meanwhile, and keeps the
/// resolver's time-out itself); the request is
/// decided at once and carried here, or, when that needs waiting (identd) or a parent,
/// handed to SwiftNIO with every byte read. A hand-over after a lookup costs SwiftNIO's
/// session a second one: that is the price of never deciding on an answer it did not get.
extension DirectConnection {
    /// The SOCKS request: carried here when it needs no waiting, else handed to SwiftNIO.
    func begin(_ request: SOCKSRequest, before: Snapshot) {
        guard request.command == .connect else { return handOver(before) }
        guard let local = listener ?? IPEndpoint.local(of: client) else { return closeQuietly() }
        let facts = RequestFacts(request, client: peer, listener: local, time: Int64(time(nil)))
        begin(facts, frontDoor: .socks(request.version), httpRequest: nil, before: before)
    }

    /// A CONNECT, SOCKS's or HTTP's: `before` is what a hand-over to SwiftNIO resumes.
    func begin(_ facts: RequestFacts, frontDoor: FrontDoor, httpRequest: HTTPRequestLine?, before: Snapshot) {
        var machine = ConnectSession(facts: facts)
        switch machine.start() {
        case .decide(let attempt):
            carry(machine, attempt, frontDoor: frontDoor, httpRequest: httpRequest) { handOver(before) }
        case .resolve(let name):
            lookUp(name, machine, PendingResolution(
                frontDoor: frontDoor, httpRequest: httpRequest, before: before, earlyBytes: received?.readableBytes ?? 0))
        default:
            handOver(before)
        }
    }

    /// Asks the resolver's pool; the answer comes back to this loop, and finds this
    /// connection only if it is still open (`clientConnection` checks its generation).
    private func lookUp(_ name: String, _ machine: ConnectSession, _ pending: PendingResolution) {
        phase = .resolving
        session = machine
        resolution = pending
        let resolver = gateway.resolver
        // Looked up a moment ago (`--resolve-cache`): decided now, on this turn.
        if let cached = resolver.cachedAddresses(of: name) { return resolved(cached) }
        // The resolver's time-out, kept here: when it passes, the name is taken as
        // unresolved (`deadlineFired`), and an answer after it finds nothing to do.
        deadline = loop.now &+ UInt64(resolver.timeout.nanoseconds)
        loop.schedule(self)
        let (loop, client, generation) = (self.loop, self.client, self.generation)
        resolver.resolve(name, logger: gateway.logger) { addresses in
            loop.execute { loop.clientConnection(client, generation: generation)?.resolved(addresses) }
        }
    }

    /// The lookup's answer (empty: the name did not resolve, is still decided and
    /// recorded, as SwiftNIO's sessions do).
    func resolved(_ addresses: [IPAddress]) {
        guard phase == .resolving, var machine = session, let pending = resolution else { return }
        resolution = nil
        guard case .decide(let attempt) = machine.resolved(addresses) else { return closeQuietly() }
        carry(machine, attempt, frontDoor: pending.frontDoor, httpRequest: pending.httpRequest) {
            // The request is whole in the bytes handed over: SwiftNIO's negotiation needs
            // only the time to read it again, however long the lookup took.
            deadline = max(negotiationDeadline, loop.now &+ 1_000_000_000)
            handOver(pending.snapshot(received: received))
        }
    }

    /// The first decision: made at once and recorded, then the connect; or, when the
    /// policy must wait (identd) or names a parent, `handOver`, with nothing recorded.
    private func carry(
        _ machine: ConnectSession, _ attempt: RequestFacts, frontDoor: FrontDoor, httpRequest: HTTPRequestLine?,
        otherwise handOver: () -> Void
    ) {
        let started = gateway.metrics == nil ? nil : ContinuousClock.now
        guard let decision = gateway.policy.decideImmediately(attempt), decision.route?.first == nil else { return handOver() }
        self.frontDoor = frontDoor
        guard gateway.admitToAuditLog() else {
            send(frontDoor.auditLogUnavailable)
            return closeQuietly()
        }
        phase = .connecting
        sessionID = gateway.nextSessionID()
        let admission = SessionAdmission(policy: gateway.policy)
        self.admission = admission
        openSessions = gateway.metrics?.sessionOpened(attempt.command, attempt.version)
        let decider = RequestDecider(gateway: gateway, session: sessionID, admission: admission, httpRequest: httpRequest)
        self.decider = decider
        let final = decider.recordImmediate(decision, attempt, started: started, on: driver.nioLoop(loop.index))
        session = machine
        if let action = session?.decided(final, recordPending: false) { perform(action) }
    }

    /// A host name's next address, after the connect to the one before failed: decided
    /// and recorded as the first was. Should the policy want to wait for it (an identd
    /// rule that only this address reaches) or send it through a parent, the session
    /// ends with a general failure: after a decision record, the connection can no longer
    /// go to SwiftNIO (docs/architecture.md, "The direct connection driver").
    func decideNextAddress(_ attempt: RequestFacts) {
        let started = gateway.metrics == nil ? nil : ContinuousClock.now
        guard let decider, let decision = gateway.policy.decideImmediately(attempt), decision.route?.first == nil else {
            return perform(.fail(.generalFailure, recordEnd: session?.ledger.allowed ?? false))
        }
        let final = decider.recordImmediate(decision, attempt, started: started, on: driver.nioLoop(loop.index))
        if let action = session?.decided(final, recordPending: false) { perform(action) }
    }
}
