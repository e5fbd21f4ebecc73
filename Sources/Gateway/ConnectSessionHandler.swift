import AccessPolicy
import NIOCore
import NIOPosix
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire

/// Carries out a `ConnectSession`'s actions for one client connection: resolves, asks
/// the `RequestDecider`, connects, and hands over to `SessionRelay`. Every outcome goes
/// back through the state machine, which tolerates it arriving late.
final class ConnectSessionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let setup: SessionSetup
    private let decider: RequestDecider
    /// The decision under way in a task (identd asked), cancelled if the client leaves.
    private var pendingDecision: PendingDecisionTask?
    private var machine: ConnectSession
    private var early: EarlyClientData
    /// The destination's connection, from connect until the relay takes it.
    private var outbound: (any Channel)?
    /// The connection being attempted: a client that leaves ends the attempt at once,
    /// rather than leaving it to `--connect-timeout`.
    private var attempt: (any Channel)?
    /// The parent that carries the session, and which of the route it was (1: the first).
    private var parent: (url: SOCKSURL, attempt: Int)?

    /// Why the client's connection closed before the reply, for the session-end record.
    private var departure = ClientDeparture.closed

    init(_ setup: SessionSetup, facts: RequestFacts, early: EarlyClientData) {
        self.setup = setup
        self.decider = setup.decider
        self.machine = ConnectSession(facts: facts)
        self.early = early
    }

    func handlerAdded(context: ChannelHandlerContext) {
        perform(machine.start(), context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // However the client's connection ended (a reset included: it reaches here through
        // `errorCaught`, not `inputClosed`), a session allowed and not yet relaying gets
        // its end recorded here.
        if case .abandon(recordEnd: true) = machine.clientLeft() {
            SessionRelay.recordEndBeforeRelay(departure, reply: nil, gateway: setup.gateway, session: setup.id)
        }
        endOutsideWork()
    }

    /// Cancels the decision under way and closes the connection attempted or made: what
    /// this session started outside its own channel.
    private func endOutsideWork() {
        pendingDecision?.cancel()
        pendingDecision = nil
        attempt?.close(promise: nil)
        attempt = nil
        outbound?.close(promise: nil)
        outbound = nil
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
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            // `printf … | nc`: the request, data, then EOF; the relay passes it on. With
            // no data, the client has gone (ConnectSession.clientSentEOF).
            early.sentEOF = true
            perform(machine.clientSentEOF(afterData: early.bytes != nil), context: context)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        departure = ClientDeparture.reason(for: error)
        context.close(promise: nil)
    }

    private func perform(_ action: ConnectSession.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .resolve(let name):
            setup.gateway.resolver.resolve(name, on: context.eventLoop, logger: setup.gateway.logger).assumeIsolated().whenSuccess { addresses in
                self.perform(self.machine.resolved(addresses), context: context)
            }
        case .decide(let facts):
            pendingDecision = decider.decide(facts, step: nil, on: context.eventLoop) { event in
                self.pendingDecision = nil
                self.perform(self.machine.received(event), context: context)
            }
        case .connect(let destination):
            connect(to: destination, context: context)
        case .connectVia(let route, let destination, let port):
            connectVia(route, destination: destination, port: port, context: context)
        case .startRelay:
            guard let outbound, let bound = outbound.localAddress?.ipEndpoint else {
                // The destination's connection closed already: nothing to relay.
                outbound?.close(promise: nil)
                self.outbound = nil
                context.sendAndClose(.failed(.generalFailure, version: setup.version))
                return
            }
            self.outbound = nil
            SessionRelay.start(
                client: context, outbound: outbound, reply: .granted(version: setup.version, boundAddress: bound), early: early,
                gateway: setup.gateway, session: setup.id, parent: parent.map { "\($0.url) (attempt \($0.attempt))" })
        case .fail(let failure, let recordEnd):
            endOutsideWork()
            let reply = SOCKSServerMessage.failed(failure, version: setup.version)
            if recordEnd {
                SessionRelay.recordEndBeforeRelay("failed: \(failure)", reply: reply, gateway: setup.gateway, session: setup.id)
            }
            context.sendAndClose(reply)
        case .closeOutbound:
            outbound?.close(promise: nil)
            outbound = nil
        case .abandon(let recordEnd):
            endOutsideWork()
            if recordEnd {
                SessionRelay.recordEndBeforeRelay(
                    "client left before the reply", reply: nil, gateway: setup.gateway, session: setup.id)
            }
            context.close(promise: nil)
        }
    }

    /// Through the allowing rule's parents (`ParentConnector`); the audit log hears which
    /// parent carried the session.
    private func connectVia(_ route: [SOCKSURL], destination: SOCKSHost, port: UInt16, context: ChannelHandlerContext) {
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timing = ConnectTiming(setup.gateway.metrics)
        ParentConnector.connect(
            route: route, command: .connect, destination: destination, port: port, gateway: setup.gateway,
            eventLoop: context.eventLoop
        ) { channel in
            // The client left before the attempt began: nothing to connect for.
            if this.value.machine.isEnded { channel.close(promise: nil) } else { this.value.attempt = channel }
        }.assumeIsolated().whenComplete { result in
            self.attempt = nil
            switch result {
            case .success(let connected):
                timing.connected()
                self.outbound = connected.channel
                self.parent = (connected.parent, connected.attempt)
                self.perform(self.machine.connected(), context: context)
            case .failure(let refused as ParentConnector.Refused):
                self.setup.gateway.logger.info(
                    "CONNECT through a parent refused", metadata: ["destination": "\(destination):\(port)", "reason": "\(refused.reason)"])
                timing.failed(refused.failure)
                self.perform(self.machine.connectFailed(refused.failure), context: context)
            case .failure(is Abandoned):
                // The client left while the parent answered: nothing failed.
                self.setup.gateway.logger.debug("CONNECT through a parent abandoned: the client left")
                self.perform(self.machine.connectFailed(.generalFailure), context: context)
            case .failure(let error):
                self.setup.gateway.logger.notice("CONNECT through a parent failed", metadata: ["error": "\(error)"])
                timing.failed(.generalFailure)
                self.perform(self.machine.connectFailed(.generalFailure), context: context)
            }
        }
    }

    private func connect(to destination: IPEndpoint, context: ChannelHandlerContext) {
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timing = ConnectTiming(setup.gateway.metrics)
        var bootstrap = ClientBootstrap(group: context.eventLoop)
        switch setup.gateway.configuration.outboundSource(toward: destination.address) {
        case .kernel:
            break
        case .address(let source):
            bootstrap = bootstrap.bind(to: SocketAddress(IPEndpoint(address: source, port: 0)))
        case .none:
            // `--external` has no address of this family: nothing may leave from another.
            perform(machine.connectFailed(.networkUnreachable), context: context)
            return
        }
        bootstrap
            .connectTimeout(setup.gateway.configuration.connectTimeout)
            .channelInitializer { channel in
                // Set here rather than with `channelOption`, which applies each option
                // through a future of its own: this is on every connection's path.
                channel.eventLoop.makeCompletedFuture {
                    // The client left before the attempt began: nothing to connect for.
                    guard !this.value.machine.isEnded else { throw ChannelError.ioOnClosedChannel }
                    this.value.attempt = channel
                    let options = channel.syncOptions
                    try options?.setOption(.allowRemoteHalfClosure, value: true)
                    try options?.setOption(.recvAllocator, value: GatewayContext.relayReceiveAllocator)
                    // Nothing is read from the destination until the relay is in place
                    // (it may wait for the audit record): bytes read earlier would be lost.
                    try options?.setOption(.autoRead, value: false)
                }
            }
            .connect(to: SocketAddress(destination))
            .assumeIsolated()
            .whenComplete { result in
                self.attempt = nil
                switch result {
                case .success(let channel):
                    timing.connected()
                    self.outbound = channel
                    self.perform(self.machine.connected(), context: context)
                case .failure(let error):
                    self.setup.gateway.logger.debug(
                        "connect failed", metadata: ["destination": "\(destination)", "error": "\(error)"])
                    let failure = SOCKSRequestFailure(connectError: error)
                    timing.failed(failure)
                    self.perform(self.machine.connectFailed(failure), context: context)
                }
            }
    }
}

/// An outbound connect timed for the metrics (`identgate_connect_duration_seconds`,
/// `identgate_connect_failures_total`); with metrics off, no clock is read.
struct ConnectTiming {
    private let metrics: GatewayMetrics?
    private let started: ContinuousClock.Instant?

    init(_ metrics: GatewayMetrics?) {
        self.metrics = metrics
        started = metrics == nil ? nil : .now
    }

    func connected() {
        if let metrics, let started { metrics.connected(after: .now - started) }
    }

    func failed(_ failure: SOCKSRequestFailure) {
        metrics?.connectFailed(failure)
    }
}
