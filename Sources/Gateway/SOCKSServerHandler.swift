import AccessPolicy
import AuditLog
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import NetAddress
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// Drives one client connection from its first byte to the relay: feeds bytes to the
/// SOCKS state machine, carries out what it asks (check credentials, decide, resolve,
/// connect), and finally hands the channel to a `RelayHandler` pair and removes itself.
///
/// While the gateway works on a request it keeps what the client sends early, up to
/// `earlyDataLimit`, then stops reading: a client cannot make it buffer more.
final class SOCKSServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let gateway: GatewayContext
    private var machine: SOCKSServerStateMachine
    private var received: ByteBuffer?
    private var negotiationDeadline: Scheduled<Void>?
    /// True while credentials are checked or a request is handled: no reads meanwhile.
    private var busy = false
    private var readPending = false
    /// The client shut down its sending side (half-close) before the relay started.
    private var clientSentEOF = false
    /// Set when the channel closed under us; callbacks still in flight then do nothing.
    private var removed = false
    /// BIND: the listening socket while it waits for the peer, and the wait's deadline.
    private var bindListener: (any Channel)?
    private var bindDeadline: Scheduled<Void>?
    /// UDP ASSOCIATE: the relay, which lives as long as this control connection.
    private var udpAssociation: UDPAssociation?
    /// The client's address, as accepted.
    private var client: IPEndpoint?
    /// Numbers this connection's records in the audit log.
    private let session: UInt64
    /// When the relay started, for the session-end record.
    private var relayStarted: ContinuousClock.Instant?
    /// An allowed request whose connect then failed still ends in a session-end record.
    private var allowed = false
    /// The write of the last allowed decision's audit record; the relay waits for it.
    private var auditWritten: EventLoopFuture<Void>?

    init(gateway: GatewayContext) {
        self.gateway = gateway
        self.machine = SOCKSServerStateMachine(offeredMethods: gateway.offeredMethods, limits: gateway.configuration.limits)
        self.session = gateway.audit?.nextSessionID() ?? 0
    }

    /// The gateway's logger with this client's address: made when something is logged,
    /// not for every connection.
    private var logger: Logger {
        var logger = gateway.logger
        if let client { logger[metadataKey: "client"] = "\(client)" }
        return logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        client = context.channel.remoteAddress?.ipEndpoint
        negotiationDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: gateway.configuration.negotiationTimeout) {
            self.negotiationTimedOut(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        removed = true
        negotiationDeadline?.cancel()
        closeBindListener()
        udpAssociation?.close()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Bytes on a UDP association's control connection mean nothing; drop them.
        if udpAssociation != nil { return }
        var bytes = unwrapInboundIn(data)
        if received == nil {
            received = bytes
        } else {
            received!.writeBuffer(&bytes)
        }
        if !busy { advance(context: context) }
    }

    func read(context: ChannelHandlerContext) {
        // A UDP association's control connection keeps reading, to see it close.
        if udpAssociation != nil {
            context.read()
        } else if busy || machine.isNegotiationComplete {
            // While a request is worked on, what the client sends early is kept for the
            // relay, up to a bound; only then is reading held back. (Holding it back at
            // once would cost two epoll changes on every connection.)
            if (received?.readableBytes ?? 0) < Self.earlyDataLimit {
                context.read()
            } else {
                readPending = true
            }
        } else {
            context.read()
        }
    }

    /// The most a client's early bytes (sent before its request is answered) are kept.
    static let earlyDataLimit = 64 * 1024

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Shutting down: a connection still negotiating has no session to finish.
            context.close(promise: nil)
        case ChannelEvent.inputClosed where udpAssociation != nil:
            // The control connection closed: the association ends with it.
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            // A client may send its request and data, then shut down its sending side
            // (`printf … | nc`). Remember it for the relay; if the request is not
            // complete by now, it never will be.
            clientSentEOF = true
            // While BIND waits for its peer the client has nothing to send: EOF means it
            // has gone, and the listening socket goes with it.
            if bindListener != nil || (!busy && !machine.isNegotiationComplete) {
                context.close(promise: nil)
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("client connection failed during negotiation", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Negotiation

    /// Runs the state machine over what has been received, until it needs more bytes or
    /// hands out work.
    private func advance(context: ChannelHandlerContext) {
        guard var buffer = received else {
            context.flush()
            return
        }
        defer { received = buffer.readableBytes > 0 ? buffer : nil }
        while true {
            let action = machine.receive(&buffer)
            switch action {
            case .waitForMoreBytes:
                context.flush()
                return
            case .send, .sendAndClose, .close:
                guard perform(action, context: context) else { return }
            case .checkCredentials(let credentials):
                context.flush()
                checkCredentials(credentials, context: context)
                return
            case .handleRequest(let request):
                context.flush()
                negotiationDeadline?.cancel()
                handle(request, context: context)
                return
            }
        }
    }

    /// Sends what a reply action says; false if the connection is ending.
    private func perform(_ action: SOCKSServerStateMachine.Action, context: ChannelHandlerContext) -> Bool {
        switch action {
        case .send(let message):
            context.write(wrapOutboundOut(encode(message, context: context)), promise: nil)
            return true
        case .sendAndClose(let message):
            sendAndClose(message, context: context)
            return false
        case .close:
            context.close(promise: nil)
            return false
        case .waitForMoreBytes, .checkCredentials, .handleRequest:
            preconditionFailure("\(action) is not a reply")
        }
    }

    private func encode(_ message: SOCKSServerMessage, context: ChannelHandlerContext) -> ByteBuffer {
        var buffer = context.channel.allocator.buffer(capacity: 22)
        buffer.writeSOCKSServerMessage(message)
        return buffer
    }

    private func sendAndClose(_ message: SOCKSServerMessage, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(encode(message, context: context))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func negotiationTimedOut(context: ChannelHandlerContext) {
        logger.info("negotiation timed out")
        if let message = machine.negotiationTimedOut() {
            sendAndClose(message, context: context)
        } else {
            context.close(promise: nil)
        }
    }

    private func checkCredentials(_ credentials: UsernamePasswordRequest, context: ChannelHandlerContext) {
        busy = true
        let store = gateway.credentials
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            store?.verify(user: credentials.username, password: credentials.password) ?? false
        }.assumeIsolated().whenComplete { result in
            guard !self.removed else { return }
            self.busy = false
            let valid = (try? result.get()) ?? false
            if !valid {
                self.logger.notice("password authentication failed", metadata: ["user": "\(credentials.username)"])
            }
            guard self.perform(self.machine.credentialsChecked(valid: valid), context: context) else { return }
            self.advance(context: context)
            self.resumeReading(context: context)
        }
    }

    private func resumeReading(context: ChannelHandlerContext) {
        if readPending, !busy, !machine.isNegotiationComplete {
            readPending = false
            context.read()
        }
    }

    // MARK: The request

    private func handle(_ request: SOCKSRequest, context: ChannelHandlerContext) {
        busy = true
        if let audit = gateway.audit, !audit.acceptsRequests {
            // Fail closed: nothing is served that the audit log cannot record.
            logger.error("request refused: the audit log cannot be written")
            fail(.generalFailure, context: context)
            return
        }
        guard let client,
            let listener = context.channel.localAddress?.ipEndpoint
        else {
            context.close(promise: nil)
            return
        }
        let destination: RequestFacts.Destination
        switch request.host {
        case .ipv4(let address): destination = .address(.v4(address))
        case .ipv6(let address): destination = .address(.v6(address))
        case .domain(let name): destination = .hostName(name)
        }
        let facts = RequestFacts(
            version: RequestFacts.Version(request.version),
            command: RequestFacts.Command(request.command),
            client: client,
            listener: listener,
            destination: destination,
            destinationPort: request.port,
            claimedUser: request.claimedUser,
            authMethod: request.authMethod == .usernamePassword ? .password : .none,
            time: Int64(Glibc.time(nil))
        )
        switch (request.command, destination) {
        case (.udpAssociate, _):
            associate(facts, request: request, context: context)
        case (.connect, .address(let address)):
            // An address needs no resolver: decided at once, with no future in between.
            decideAndConnect(facts, candidates: [address][...], context: context)
        case (.bind, .address(let address)):
            var facts = facts
            facts.resolvedAddress = address
            decideAndBind(facts, request: request, context: context)
        case (.connect, .hostName(let name)):
            gateway.resolver.resolve(name, on: context.eventLoop).assumeIsolated().whenSuccess { addresses in
                guard !self.removed else { return }
                self.decideAndConnect(facts, candidates: addresses.prefix(Self.maxAddressesTried), context: context)
            }
        case (.bind, .hostName(let name)):
            gateway.resolver.resolve(name, on: context.eventLoop).assumeIsolated().whenSuccess { addresses in
                guard !self.removed else { return }
                var facts = facts
                facts.resolvedAddress = addresses.first
                self.decideAndBind(facts, request: request, context: context)
            }
        }
    }

    /// Decides on the event loop when no identd must be asked, else in a task, and
    /// records the decision. An allowed request goes on once its record is queued (the
    /// writer never drops one); with `--audit-sync always` its relay starts only once
    /// the record is written and synced (`auditWritten`).
    private func decide(
        _ facts: RequestFacts, step: String = "decision", context: ChannelHandlerContext, then act: @escaping (Decision) -> Void
    ) {
        let policy = gateway.policy
        let decided: (Decision) -> Void = { decision in
            self.logDecision(decision, facts, step: step)
            guard let audit = self.gateway.audit else {
                act(decision)
                return
            }
            let stepName = step == "decision" ? nil : step
            guard decision.verdict == .allow, audit.relayWaitsForWrite else {
                audit.recordDecision(facts, decision, session: self.session, step: stepName)
                act(decision)
                return
            }
            // `--audit-sync always`: the connect (or the BIND listener) starts while the
            // record is written and synced; the relay waits for both.
            let written = context.eventLoop.makePromise(of: Void.self)
            audit.recordDecision(facts, decision, session: self.session, step: stepName, written: written)
            self.auditWritten = written.futureResult
            act(decision)
        }
        if let decision = policy.decideImmediately(facts) {
            decided(decision)
            return
        }
        context.eventLoop.makeFutureWithTask { await policy.decide(facts) }
            .assumeIsolated().whenSuccess { decision in
                guard !self.removed else { return }
                decided(decision)
            }
    }

    private func logDecision(_ decision: Decision, _ facts: RequestFacts, step: String = "decision") {
        if decision.verdict == .allow { allowed = true }
        guard gateway.logger.logLevel <= .debug else { return }
        logger.debug(
            "\(step)",
            metadata: [
                "command": "\(facts.command.rawValue)",
                "destination": "\(facts.destination):\(facts.destinationPort)",
                "address": "\(facts.destinationAddress.map(\.description) ?? "unresolved")",
                "verdict": "\(decision.verdict.rawValue)",
                "rule": "\(decision.rule?.description ?? "final deny")",
                "ident": "\(decision.ident.map(\.description) ?? "not asked")",
            ]
        )
    }

    /// A name may resolve to several addresses (say ::1 and 127.0.0.1); like any client
    /// the gateway tries them in order. Each is decided by the policy before it is
    /// connected to, so a CIDR rule always sees the address actually used.
    static let maxAddressesTried = 4

    private func decideAndConnect(
        _ facts: RequestFacts, candidates: ArraySlice<IPAddress>, context: ChannelHandlerContext,
        previousFailure: SOCKSRequestFailure? = nil
    ) {
        var facts = facts
        facts.resolvedAddress = candidates.first
        let decidedFacts = facts
        decide(decidedFacts, context: context) { decision in
            self.act(
                on: decision, facts: decidedFacts, candidates: candidates, context: context, previousFailure: previousFailure)
        }
    }

    private func act(
        on decision: Decision, facts: RequestFacts, candidates: ArraySlice<IPAddress>, context: ChannelHandlerContext,
        previousFailure: SOCKSRequestFailure?
    ) {
        guard decision.verdict == .allow else {
            // After a failed attempt, a later address the policy refuses ends the
            // search; the client hears why the allowed attempt failed.
            fail(previousFailure ?? SOCKSRequestFailure(decision.refusal ?? .notAllowed), context: context)
            return
        }
        guard let address = facts.destinationAddress else {
            fail(.hostUnreachable, context: context)
            return
        }
        connect(to: IPEndpoint(address: address, port: facts.destinationPort), context: context) { failure in
            let rest = candidates.dropFirst()
            guard !rest.isEmpty else {
                self.fail(failure, context: context)
                return
            }
            self.decideAndConnect(facts, candidates: rest, context: context, previousFailure: failure)
        }
    }

    private func connect(
        to destination: IPEndpoint, context: ChannelHandlerContext, onFailure: @escaping (SOCKSRequestFailure) -> Void
    ) {
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(gateway.configuration.connectTimeout)
            .channelInitializer { channel in
                // Set here rather than with `channelOption`, which applies each option
                // through a future of its own: this is on every connection's path.
                channel.eventLoop.makeCompletedFuture {
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
                switch result {
                case .success(let outbound) where self.removed:
                    outbound.close(promise: nil)
                case .success(let outbound):
                    self.startRelay(to: outbound, context: context)
                case .failure where self.removed:
                    break
                case .failure(let error):
                    self.logger.debug("connect failed", metadata: ["destination": "\(destination)", "error": "\(error)"])
                    onFailure(SOCKSRequestFailure(connectError: error))
                }
            }
    }

    private func fail(_ failure: SOCKSRequestFailure, context: ChannelHandlerContext) {
        let reply = machine.requestFailed(failure)
        if allowed, let audit = gateway.audit {
            var record = AuditRecord(event: .sessionEnd)
            record.session = session
            record.reason = "failed: \(failure)"
            record.reply = Self.code(of: reply)
            record.bytesFromClient = 0
            record.bytesToClient = 0
            audit.record(record)
        }
        sendAndClose(reply, context: context)
    }

    private static func code(of message: SOCKSServerMessage) -> Int? {
        switch message {
        case .socks4Reply(let reply): Int(reply.code.rawValue)
        case .socks5Reply(let reply): Int(reply.code.rawValue)
        case .methodSelection, .usernamePasswordReply: nil
        }
    }

    /// Sends the success reply with the outbound socket's local address, then moves both
    /// channels to the relay, with any bytes the client sent early going first.
    // MARK: BIND

    private func decideAndBind(_ facts: RequestFacts, request: SOCKSRequest, context: ChannelHandlerContext) {
        decide(facts, context: context) { decision in
            guard decision.verdict == .allow else {
                self.fail(SOCKSRequestFailure(decision.refusal ?? .notAllowed), context: context)
                return
            }
            // Listen on the address this host would use to reach the expected peer (the
            // "outside" address); with no usable peer address, on the one the client reached.
            let local = facts.destinationAddress.flatMap(RouteSource.address(toward:)) ?? facts.listener.address
            BindListener.listen(on: local, eventLoop: context.eventLoop).assumeIsolated().whenComplete { result in
                switch result {
                case .failure(let error):
                    self.logger.notice("BIND cannot listen", metadata: ["address": "\(local)", "error": "\(error)"])
                    self.fail(.generalFailure, context: context)
                case .success(let (listener, peer)) where self.removed:
                    listener.close(promise: nil)
                    peer.whenSuccess { $0.close(promise: nil) }
                case .success(let (listener, peer)):
                    self.awaitPeer(listener: listener, peer: peer, facts: facts, request: request, context: context)
                }
            }
        }
    }

    private func awaitPeer(
        listener: any Channel, peer: EventLoopFuture<any Channel>, facts: RequestFacts, request: SOCKSRequest,
        context: ChannelHandlerContext
    ) {
        guard let listening = listener.localAddress?.ipEndpoint else {
            listener.close(promise: nil)
            fail(.generalFailure, context: context)
            return
        }
        bindListener = listener
        let openListeners = gateway.openBindListeners
        openListeners.withLockedValue { $0 += 1 }
        listener.closeFuture.whenComplete { _ in openListeners.withLockedValue { $0 -= 1 } }
        context.writeAndFlush(wrapOutboundOut(encode(machine.bindListening(at: listening), context: context)), promise: nil)
        bindDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: gateway.configuration.bindTimeout) {
            self.logger.info("BIND: no peer connected in time", metadata: ["listening": "\(listening)"])
            self.closeBindListener()
            self.fail(.timedOut, context: context)
        }
        peer.assumeIsolated().whenSuccess { peer in
            self.closeBindListener()
            guard !self.removed, let from = peer.remoteAddress?.ipEndpoint else {
                peer.close(promise: nil)
                return
            }
            self.checkPeer(peer, from: from, facts: facts, request: request, context: context)
        }
    }

    /// SOCKS4 demands the peer be the host the client named (DSTIP); every version asks
    /// the policy again with the peer as the destination.
    private func checkPeer(
        _ peer: any Channel, from: IPEndpoint, facts: RequestFacts, request: SOCKSRequest, context: ChannelHandlerContext
    ) {
        if request.version != .socks5, let expected = facts.destinationAddress, expected != .v4(.any),
            expected.unmapped != from.address.unmapped
        {
            logger.notice("BIND: the peer is not the requested host", metadata: ["peer": "\(from)", "expected": "\(expected)"])
            peer.close(promise: nil)
            fail(.notAllowed, context: context)
            return
        }
        var peerFacts = facts
        peerFacts.destination = .address(from.address)
        peerFacts.resolvedAddress = nil
        decide(peerFacts, step: "BIND peer decision", context: context) { decision in
            guard decision.verdict == .allow else {
                peer.close(promise: nil)
                self.fail(SOCKSRequestFailure(decision.refusal ?? .notAllowed), context: context)
                return
            }
            self.startRelay(to: peer, context: context, replyAddress: from)
        }
    }

    private func closeBindListener() {
        bindDeadline?.cancel()
        bindDeadline = nil
        bindListener?.close(promise: nil)
        bindListener = nil
    }

    // MARK: UDP ASSOCIATE

    /// Sets up the relay and answers with its address. The request's address is where
    /// the client will send from (zeros: not known yet); each datagram's destination is
    /// decided by the policy as it comes.
    private func associate(_ facts: RequestFacts, request: SOCKSRequest, context: ChannelHandlerContext) {
        let expected: IPEndpoint?
        switch request.host {
        case .ipv4(let address): expected = IPEndpoint(address: .v4(address), port: request.port)
        case .ipv6(let address): expected = IPEndpoint(address: .v6(address), port: request.port)
        case .domain: expected = nil
        }
        let association = UDPAssociation(
            gateway: gateway, facts: facts, expectedSource: expected, control: context.channel, session: session, logger: logger)
        association.start(on: facts.listener.address, eventLoop: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                self.logger.notice("UDP ASSOCIATE cannot bind a relay", metadata: ["error": "\(error)"])
                self.fail(.generalFailure, context: context)
            case .success where self.removed:
                association.close()
            case .success(let relay):
                self.udpAssociation = association
                self.busy = false
                context.writeAndFlush(
                    self.wrapOutboundOut(self.encode(self.machine.requestGranted(boundAddress: relay), context: context)),
                    promise: nil)
                context.read()
            }
        }
    }

    /// `replyAddress`: what the success reply carries; by default the outbound socket's
    /// local address (CONNECT). BIND's second reply carries the peer's address.
    private func startRelay(to outbound: any Channel, context: ChannelHandlerContext, replyAddress: IPEndpoint? = nil) {
        if let written = auditWritten {
            auditWritten = nil
            written.assumeIsolated().whenComplete { result in
                switch result {
                case .success where self.removed:
                    outbound.close(promise: nil)
                case .success:
                    self.startRelay(to: outbound, context: context, replyAddress: replyAddress)
                case .failure(let error):
                    self.logger.error("request refused: its decision could not be logged", metadata: ["error": "\(error)"])
                    outbound.close(promise: nil)
                    self.allowed = false
                    guard !self.removed else { return }
                    self.fail(.generalFailure, context: context)
                }
            }
            return
        }
        guard context.channel.isActive, let bound = replyAddress ?? outbound.localAddress?.ipEndpoint else {
            outbound.close(promise: nil)
            context.close(promise: nil)
            return
        }
        let reply = encode(machine.requestGranted(boundAddress: bound), context: context)
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)

        let started = ContinuousClock.now
        let session = self.session
        let audit = gateway.audit
        let (clientSide, destinationSide) = RelayHandler.matchedPair { client in
            guard let audit else { return }
            var record = AuditRecord(event: .sessionEnd)
            record.session = session
            record.bytesFromClient = client.bytesRead
            record.bytesToClient = client.partnerBytesRead
            let elapsed = ContinuousClock.now - started
            record.durationMs = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
            record.reason = client.closeReason
            audit.record(record)
        }
        do {
            try outbound.pipeline.syncOperations.addHandler(destinationSide)
            if let idleTimeout = gateway.configuration.idleTimeout {
                try context.pipeline.syncOperations.addHandler(
                    IdleStateHandler(allTimeout: idleTimeout), position: .before(self))
            }
            try context.pipeline.syncOperations.addHandler(clientSide, position: .after(self))
        } catch {
            outbound.close(promise: nil)
            context.close(promise: nil)
            return
        }
        if let early = received, early.readableBytes > 0 {
            outbound.writeAndFlush(early, promise: nil)
        }
        if clientSentEOF {
            // The relay will not see this EOF again: pass it on now, after the data.
            outbound.close(mode: .output, promise: nil)
        }
        received = nil
        busy = false
        // The destination (or BIND peer) was connected without reading, so that nothing
        // it sent early was lost before the relay was in place; it reads from here on.
        try? outbound.syncOptions?.setOption(.autoRead, value: true)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        // The read held back during negotiation now goes to the relay.
        context.channel.read()
    }
}

extension RequestFacts.Command {
    init(_ command: SOCKSCommand) {
        switch command {
        case .connect: self = .connect
        case .bind: self = .bind
        case .udpAssociate: self = .udp
        }
    }
}

extension RequestFacts.Version {
    init(_ version: SOCKSVersion) {
        switch version {
        case .socks4: self = .socks4
        case .socks4a: self = .socks4a
        case .socks5: self = .socks5
        }
    }
}
