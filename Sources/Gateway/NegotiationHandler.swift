import AccessPolicy
import AuditLog
import Logging
import NIOCore
import NetAddress
import SOCKSSession
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// The first handler of every client connection: moves bytes through
/// `SOCKSServerStateMachine` (greeting, RFC 1929 credentials, request) under the
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
    /// A password check runs on the thread pool; reading is bounded meanwhile.
    private var checkingCredentials = false
    private var readPending = false

    init(gateway: GatewayContext) {
        self.gateway = gateway
        self.machine = SOCKSServerStateMachine(offeredMethods: gateway.offeredMethods, limits: gateway.configuration.limits)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: gateway.configuration.negotiationTimeout) {
            self.gateway.logger.info("negotiation timed out", metadata: ["client": "\(context.remoteAddressText)"])
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
        received.append(&bytes)
        if !checkingCredentials { advance(context: context) }
    }

    func read(context: ChannelHandlerContext) {
        if checkingCredentials, !received.acceptsMore {
            readPending = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Shutting down: a connection still negotiating has no session to finish.
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            // The request is not complete by now, so it never will be; unless a password
            // check is running, after which the bytes already here are read.
            received.sentEOF = true
            if !checkingCredentials { context.close(promise: nil) }
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
            case .handleRequest(let request):
                context.flush()
                handOver(request, early: EarlyClientData(bytes: buffer, sentEOF: received.sentEOF), context: context)
                return
            }
        }
    }

    private func checkCredentials(_ credentials: UsernamePasswordRequest, context: ChannelHandlerContext) {
        checkingCredentials = true
        let store = gateway.credentials
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            store?.verify(user: credentials.username, password: credentials.password) ?? false
        }.assumeIsolated().whenComplete { result in
            self.checkingCredentials = false
            let valid = (try? result.get()) ?? false
            if !valid {
                self.gateway.logger.notice(
                    "password authentication failed", metadata: ["user": "\(DisplayText.escaped(credentials.username))"])
            }
            // After the deadline or a close, the machine answers `.close`: nothing more is done.
            switch self.machine.credentialsChecked(valid: valid) {
            case .send(let message):
                context.write(message)
                self.advance(context: context)
                if self.readPending, !self.machine.isNegotiationComplete {
                    self.readPending = false
                    context.read()
                }
            case .sendAndClose(let message):
                context.sendAndClose(message)
            case .close, .waitForMoreBytes, .checkCredentials, .handleRequest:
                context.close(promise: nil)
            }
        }
    }

    /// Replaces this handler with the session handler for the request's command.
    private func handOver(_ request: SOCKSRequest, early: EarlyClientData, context: ChannelHandlerContext) {
        deadline?.cancel()
        switch gateway.audit?.admitRequest() {
        case .admitted, nil:
            break
        case .admittedAgain(let refused):
            gateway.logger.notice("requests are served again", metadata: ["refused meanwhile": "\(refused)"])
        case .refused(let first):
            // Fail closed: nothing is served that the audit log cannot record. Logged once
            // per episode: a full disk must not fill stderr with a line per request.
            if first {
                gateway.logger.error(
                    "requests refused: the audit log cannot be written or is too far behind (logged once until it recovers)")
            }
            context.sendAndClose(.failed(.generalFailure, version: request.version))
            return
        }
        guard let client = context.channel.remoteAddress?.ipEndpoint, let listener = context.channel.localAddress?.ipEndpoint
        else {
            context.close(promise: nil)
            return
        }
        let facts = RequestFacts(request, client: client, listener: listener, time: Int64(Glibc.time(nil)))
        let session = SessionSetup(
            gateway: gateway, id: gateway.audit?.nextSessionID() ?? 0, version: request.version,
            admission: SessionAdmission(policy: gateway.policy, clientClosed: context.channel.closeFuture))
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

/// What every session handler gets from the negotiation.
struct SessionSetup {
    let gateway: GatewayContext
    /// Numbers the session's records in the audit log.
    let id: UInt64
    let version: SOCKSVersion
    let admission: SessionAdmission

    var decider: RequestDecider { RequestDecider(gateway: gateway, session: id, admission: admission) }
}

extension ChannelHandlerContext {
    /// The client's address for a log line, made only when the line is printed.
    var remoteAddressText: String { channel.remoteAddress?.ipEndpoint?.description ?? "unknown" }
}
