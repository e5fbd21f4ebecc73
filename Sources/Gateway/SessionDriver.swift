import AccessPolicy
import NIOCore
import SOCKSSession
import SOCKSWire

/// The lifecycle every session that one client connection drives shares, written once:
/// the client's early bytes and EOF, its departure (however its connection closes, the
/// end of an allowed session is recorded, once), resolving, deciding through the
/// `RequestDecider`, failing and abandoning. A session's handler subclasses it for its
/// own actions (`performOwn`) and for what it starts outside its channel
/// (`endOutsideWork`). Every outcome goes back through the state machine, which
/// tolerates it arriving late.
class SessionDriver<Machine: ClientSession>: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let setup: SessionSetup
    let decider: RequestDecider
    var machine: Machine
    /// What the client sent after its request, and whether it sent EOF, before the relay.
    var early: EarlyClientData
    /// The decision under way in a task (identd asked), cancelled if the client leaves.
    private var pendingDecision: PendingDecisionTask?
    /// Why the client's connection closed before the reply, for the session-end record.
    private var departure = ClientDeparture.closed

    init(_ setup: SessionSetup, facts: RequestFacts, early: EarlyClientData) {
        self.setup = setup
        self.decider = setup.decider
        self.machine = Machine(facts: facts)
        self.early = early
    }

    func handlerAdded(context: ChannelHandlerContext) {
        perform(machine.start(), context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // However the client's connection ended (a reset included: it reaches here through
        // `errorCaught`, not `inputClosed`), a session allowed and not yet relaying gets
        // its end recorded here.
        if case .abandon(recordEnd: true)? = Machine.shared(machine.clientLeft()) {
            SessionRelay.recordEndBeforeRelay(departure, reply: nil, gateway: setup.gateway, session: setup.id)
        }
        endOutsideWork()
    }

    /// Ends what this session started outside its own channel: the decision under way
    /// here; a subclass closes its connections too, and calls this.
    func endOutsideWork() {
        pendingDecision?.cancel()
        pendingDecision = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        early.append(&bytes)
    }

    func read(context: ChannelHandlerContext) {
        if early.acceptsMore { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Shutdown: a session not yet relaying ends now, and says why. Draining after
            // a takeover: it goes on.
            guard !setup.gateway.isDraining else { return }
            departure = ClientDeparture.gatewayStopped
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            // `printf … | nc`: the request, data, then EOF; the relay passes it on (a
            // CONNECT's). With no data, the client has gone.
            let afterData = early.bytes != nil
            early.sentEOF = true
            perform(machine.clientSentEOF(afterData: afterData), context: context)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        departure = ClientDeparture.reason(for: error)
        context.close(promise: nil)
    }

    /// Carries out an action: the shared ones here, the session's own in `performOwn`.
    final func perform(_ action: Machine.Action, context: ChannelHandlerContext) {
        guard let shared = Machine.shared(action) else { return performOwn(action, context: context) }
        switch shared {
        case .nothing:
            break
        case .resolve(let name):
            setup.gateway.resolver.resolve(name, on: context.eventLoop, logger: setup.gateway.logger).assumeIsolated().whenSuccess { addresses in
                self.perform(self.machine.resolved(addresses), context: context)
            }
        case .decide(let facts, let step):
            pendingDecision = decider.decide(facts, step: step, on: context.eventLoop) { event in
                self.pendingDecision = nil
                self.perform(self.machine.received(event), context: context)
            }
        case .fail(let failure, let recordEnd):
            endOutsideWork()
            let reply = setup.frontDoor.failed(failure)
            if recordEnd {
                SessionRelay.recordEndBeforeRelay("failed: \(failure)", reply: reply, gateway: setup.gateway, session: setup.id)
            }
            context.sendAndClose(reply)
        case .abandon(let recordEnd):
            endOutsideWork()
            if recordEnd {
                SessionRelay.recordEndBeforeRelay(ClientDeparture.leftAtEOF, reply: nil, gateway: setup.gateway, session: setup.id)
            }
            context.close(promise: nil)
        }
    }

    /// The session's own actions (connect, listen, relay, …). Every action a machine has
    /// is either shared or handled by its subclass; here, none is left.
    func performOwn(_ action: Machine.Action, context: ChannelHandlerContext) {}
}
