import AccessPolicy
import AuditLog
import Logging
import NIOCore
import NIOHTTP1
import NetAddress
import PrintableText
import SOCKSSession
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// The first handler of every client connection: moves bytes through
/// `SOCKSServerStateMachine` (greeting, RFC 1929 credentials or an RFC 1961 GSS-API
/// context and protection level, request) under the
/// negotiation deadline, and hands the request, with the identity established and the
/// bytes that came after it, to the session handler for its command, then leaves.
final class NegotiationHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let gateway: GatewayContext
    private var machine: SOCKSServerStateMachine
    private var received = EarlyClientData()
    private var deadline: Scheduled<Void>?
    /// When the negotiation must be over (an HTTP request's head too).
    private var deadlineTime = NIODeadline.now()
    /// A password check or a GSS-API context step runs on the thread pool; reading is
    /// bounded meanwhile.
    private var awaitingWork = false
    private var readPending = false
    /// RFC 1961: the client's security context, and what it negotiated.
    private var security: GSSSecurityContext?
    private var gssapi: RequestFacts.GSSAPISecurity?
    /// What checked the RFC 1929 password, for the decision record.
    private var passwordSource: RequestFacts.PasswordSource?
    /// Set when integrity or confidentiality was granted: the session's UDP datagrams
    /// are wrapped too.
    private var perMessage: GSSPerMessage?
    /// The real client, when the connection came through a load balancer (PROXY protocol).
    private var proxied: ProxiedConnection?
    private var firstBytes = true

    init(gateway: GatewayContext) {
        self.gateway = gateway
        self.machine = SOCKSServerStateMachine(offeredMethods: gateway.offeredMethods, limits: gateway.configuration.limits)
    }

    /// A negotiation the direct driver began and hands over (`DirectConnection`): its
    /// machine as it was before the bytes it could not carry, under the same deadline.
    /// `atStart`: no message was taken yet (the front door's first-byte check applies).
    init(gateway: GatewayContext, resuming machine: SOCKSServerStateMachine, atStart: Bool, deadline: NIODeadline) {
        self.gateway = gateway
        self.machine = machine
        self.firstBytes = atStart
        self.resumedDeadline = deadline
    }

    /// Set when the negotiation began in the direct driver.
    private var resumedDeadline: NIODeadline?

    func handlerAdded(context: ChannelHandlerContext) {
        deadlineTime = resumedDeadline ?? context.eventLoop.now + gateway.configuration.negotiationTimeout
        deadline = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadlineTime) {
            self.gateway.repeated.occurred(.negotiationTimeout, on: context.eventLoop, metadata: ["client": "\(context.remoteAddressText)"])
            if let message = self.machine.negotiationTimedOut() {
                context.sendAndClose(message)
            } else {
                context.close(promise: nil)
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if firstBytes, let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) {
            firstBytes = false
            if proxied == nil, first == 0x0D || bytes.readableBytesView.starts(with: "PROXY ".utf8) {
                // A PROXY protocol header from a peer that is not a trusted load balancer.
                gateway.repeated.occurred(.untrustedProxyHeader, on: context.eventLoop, metadata: ["peer": "\(context.remoteAddressText)"])
                return context.close(promise: nil)
            }
            // The front door: SOCKS starts with its version (4, 5), an HTTP request with
            // its method's first capital letter.
            if (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first) {
                guard gateway.configuration.protocols.contains(.http) else { return context.close(promise: nil) }
                return switchToHTTP(bytes, context: context)
            }
            guard gateway.configuration.protocols.contains(.socks) else { return context.close(promise: nil) }
        }
        received.append(&bytes)
        if !awaitingWork { advance(context: context) }
    }

    func read(context: ChannelHandlerContext) {
        if awaitingWork, !received.acceptsMore {
            readPending = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let event as ProxiedConnection:
            proxied = event
        case is ChannelShouldQuiesceEvent:
            // Shutting down: a connection still negotiating has no session to finish.
            // Handed over to a successor: this connection was accepted here, so it is
            // served here, to its end.
            if !gateway.isDraining { context.close(promise: nil) }
        case ChannelEvent.inputClosed:
            // The request is not complete by now, so it never will be; unless a password
            // check is running, after which the bytes already here are read.
            received.sentEOF = true
            if !awaitingWork { context.close(promise: nil) }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        gateway.logger.debug("client connection failed during negotiation", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Runs the state machine over what has been received, until it needs more bytes or
    /// hands out work.
    private func advance(context: ChannelHandlerContext) {
        var buffer = received.bytes ?? context.channel.allocator.buffer(capacity: 0)
        while true {
            let action = machine.receive(&buffer)
            switch action {
            case .waitForMoreBytes:
                received = EarlyClientData(bytes: buffer, sentEOF: received.sentEOF)
                context.flush()
                if received.sentEOF { context.close(promise: nil) }
                return
            case .send(let message):
                context.write(message)
            case .sendAndClose(let message):
                context.sendAndClose(message)
                return
            case .close:
                context.close(promise: nil)
                return
            case .checkCredentials(let credentials):
                received = EarlyClientData(bytes: buffer, sentEOF: received.sentEOF)
                context.flush()
                checkCredentials(credentials, context: context)
                return
            case .acceptGSSToken(let token):
                received = EarlyClientData(bytes: buffer, sentEOF: received.sentEOF)
                context.flush()
                acceptGSSToken(token, context: context)
                return
            case .chooseGSSProtection(let token):
                guard let protection = chooseProtection(token, context: context) else { return }
                if protection > .none, let security {
                    perMessage = GSSPerMessage(security: security, confidential: protection == .confidentiality)
                    // From here on every message is wrapped both ways: the level's reply
                    // leaves as it is, then the handler goes in front, and bytes already
                    // read after the level message (the wrapped request) go through it.
                    context.flush()
                    let handler = GSSProtectionHandler(
                        security: security, protection: protection == .confidentiality ? .confidentiality : .integrity,
                        gateway: gateway)
                    do {
                        try context.pipeline.syncOperations.addHandler(handler, position: .first)
                    } catch {
                        context.close(promise: nil)
                        return
                    }
                    received = EarlyClientData(bytes: nil, sentEOF: received.sentEOF)
                    if buffer.readableBytes > 0, let head = try? context.pipeline.syncOperations.context(handler: handler) {
                        handler.unwrapMessages(&buffer, context: head)
                    }
                    return
                }
            case .handleRequest(let request):
                context.flush()
                handOver(request, early: EarlyClientData(bytes: buffer, sentEOF: received.sentEOF), context: context)
                return
            }
        }
    }

    private func checkCredentials(_ credentials: UsernamePasswordRequest, context: ChannelHandlerContext) {
        awaitingWork = true
        gateway.checkPassword(user: credentials.username, password: credentials.password, context: context) { check in
            self.awaitingWork = false
            if case .accepted(let source) = check { self.passwordSource = source }
            // After the deadline or a close, the machine answers `.close`: nothing more is done.
            self.resume(self.machine.credentialsChecked(valid: check.accepted), context: context)
        }
    }

    /// One RFC 1961 context step, on the thread pool: accepting a context reads the
    /// replay cache, a file.
    private func acceptGSSToken(_ token: [UInt8], context: ChannelHandlerContext) {
        guard let acceptor = gateway.gssAcceptor else { return resume(machine.gssFailed(), context: context) }
        let security = self.security ?? GSSSecurityContext(acceptor: acceptor)
        self.security = security
        awaitingWork = true
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            try security.accept(token)
        }.assumeIsolated().whenComplete { result in
            self.awaitingWork = false
            switch result {
            case .success(let step) where !step.complete:
                self.resume(self.machine.gssContextStep(reply: step.reply, principal: nil), context: context)
            case .success(let step):
                guard let peer = security.peer() else { return self.resume(self.machine.gssFailed(), context: context) }
                self.gssapi = RequestFacts.GSSAPISecurity(mechanism: peer.mechanism, protection: .none)
                self.resume(self.machine.gssContextStep(reply: step.reply, principal: peer.principal), context: context)
            case .failure(let error):
                self.gateway.logger.notice(
                    "GSS-API authentication failed",
                    metadata: ["client": "\(context.remoteAddressText)", "error": "\(DisplayText.escaped("\(error)"))"])
                self.resume(self.machine.gssFailed(), context: context)
            }
        }
    }

    /// RFC 1961 §4: the level the client asks for, wrapped (or bare, as NEC's
    /// implementation and curl's `--socks5-gssapi-nec` send it), raised to the policy's
    /// minimum; the reply in the same form. Returns the level granted after sending the
    /// reply, or nil when the negotiation ended.
    private func chooseProtection(_ token: [UInt8], context: ChannelHandlerContext) -> MessageProtection? {
        guard let security else {
            resume(machine.gssFailed(), context: context)
            return nil
        }
        let bare = token.count == 1
        let octet: UInt8?
        if bare {
            octet = token.first
        } else {
            let unwrapped = try? token.withUnsafeBytes { bytes in try security.unwrap(bytes) }
            octet = unwrapped?.message.count == 1 ? unwrapped?.message.first : nil
        }
        guard let octet, let requested = GSSAPIProtection(requested: octet) else {
            gateway.logger.notice("GSS-API protection level not understood", metadata: ["client": "\(context.remoteAddressText)"])
            resume(machine.gssFailed(), context: context)
            return nil
        }
        let minimum = gateway.policy.minimumProtection
        let granted: MessageProtection = max(requested.messageProtection, minimum)
        let level = GSSAPIProtection(granted)
        let reply: [UInt8]
        if bare {
            reply = [level.rawValue]
        } else {
            guard let wrapped = try? [level.rawValue].withUnsafeBytes({ bytes in
                try security.wrap(bytes, confidential: false)
            }) else {
                resume(machine.gssFailed(), context: context)
                return nil
            }
            reply = wrapped
        }
        gssapi?.protection = granted
        guard case .send(let message) = machine.gssProtectionChosen(reply: reply) else {
            context.close(promise: nil)
            return nil
        }
        context.write(message)
        return granted
    }

    /// Carries on after work done off the event loop (a password check, a GSS-API step).
    private func resume(_ action: SOCKSServerStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .send(let message):
            context.write(message)
        case .waitForMoreBytes:
            break
        case .sendAndClose(let message):
            context.sendAndClose(message)
            return
        case .close, .checkCredentials, .acceptGSSToken, .chooseGSSProtection, .handleRequest:
            context.close(promise: nil)
            return
        }
        advance(context: context)
        if readPending, !machine.isNegotiationComplete {
            readPending = false
            context.read()
        }
    }

    /// Hands the connection to the HTTP front door: NIOHTTP1's decoder and an
    /// `HTTPFrontHandler` take this handler's place, under the same deadline.
    private func switchToHTTP(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        deadline?.cancel()
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
        let front = HTTPFrontHandler(gateway: gateway, deadline: deadlineTime, proxied: proxied)
        do {
            try context.pipeline.syncOperations.addHandlers([decoder, front], position: .after(self))
        } catch {
            return context.close(promise: nil)
        }
        context.fireChannelRead(NIOAny(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Replaces this handler with the session handler for the request's command.
    private func handOver(_ request: SOCKSRequest, early: EarlyClientData, context: ChannelHandlerContext) {
        deadline?.cancel()
        guard gateway.admitToAuditLog() else {
            context.sendAndClose(FrontDoor.socks(request.version).auditLogUnavailable)
            return
        }
        guard let peer = context.channel.remoteAddress?.ipEndpoint, let local = context.channel.localAddress?.ipEndpoint
        else {
            context.close(promise: nil)
            return
        }
        // Behind a load balancer, the policy and the audit log see the client its header named.
        let client = proxied?.client ?? peer
        let listener = proxied?.frontEnd ?? local
        var facts = RequestFacts(request, client: client, listener: listener, time: Int64(Glibc.time(nil)))
        facts.gssapi = gssapi
        facts.passwordSource = passwordSource
        if proxied?.client != nil { facts.balancer = proxied?.balancer }
        let session = SessionSetup(
            gateway: gateway, id: gateway.nextSessionID(), frontDoor: .socks(request.version),
            admission: SessionAdmission(policy: gateway.policy, clientClosed: context.channel.closeFuture),
            perMessage: perMessage)
        gateway.metrics?.sessionStarted(facts.command, facts.version, closed: context.channel.closeFuture)
        let next: any ChannelHandler =
            switch request.command {
            case .connect: ConnectSessionHandler(session, facts: facts, early: early)
            case .bind: BindSessionHandler(session, facts: facts, early: early)
            case .udpAssociate: UDPControlHandler(session, facts: facts, request: request)
            }
        let channel = context.channel
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        do {
            try channel.pipeline.syncOperations.addHandler(next)
        } catch {
            channel.close(promise: nil)
            return
        }
        // A read held back during a password check is the session handler's to take.
        if readPending {
            readPending = false
            channel.read()
        }
    }
}

extension GatewayContext {
    /// Whether a complete request may go on to its session: fail closed, nothing is served
    /// that the audit log cannot record. Logged once per episode: a full disk must not
    /// fill stderr with a line per request.
    func admitToAuditLog() -> Bool {
        switch audit?.admitRequest() {
        case .admitted, nil:
            return true
        case .admittedAgain(let refused):
            logger.notice("requests are served again", metadata: ["refused meanwhile": "\(refused)"])
            return true
        case .refused(let first):
            if first {
                logger.error("requests refused: the audit log cannot be written or is too far behind (logged once until it recovers)")
            }
            return false
        }
    }
}
