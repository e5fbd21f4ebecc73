import AccessPolicy
import AuditLog
import HTTPProxyWire
import NIOCore
import NIOHTTP1
import NetAddress
import SOCKSSession

/// Forwards plain-HTTP proxy requests (absolute-form, any method) on a kept-alive client
/// connection, one request at a time. Each request is a session of its own: its own ID,
/// policy decision (version http, command connect, to the target's host and port; ident,
/// limits and `via` parents as for CONNECT), connection to the destination
/// (`UpstreamConnector`) and session-end record with the status and the bytes each way.
/// The request goes on in origin-form with the hop-by-hop fields removed and `Via`
/// added; bodies stream both ways, each side read only while the other can take more.
///
/// The proxy's own answers (403, 502, 504, …) end the client connection: a request body
/// the client may already be sending is not read and cannot be skipped safely.
final class HTTPForwardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    enum State {
        /// Waiting for the next request (for at most the negotiation deadline).
        case idle
        /// Checking who the client is, or reaching the destination.
        case preparing(ForwardedExchange)
        case forwarding(ForwardedExchange)
        case closed
    }

    let gateway: GatewayContext
    private let proxied: ProxiedConnection?
    private let authentication: HTTPProxyAuthentication
    var state = State.idle
    /// Request parts that came after the current request (pipelined), in order.
    private var queued: [HTTPServerRequestPart] = []
    /// A read the client side asked for while it was held back.
    private var readPending = false
    /// The client asked to close after the current exchange.
    var closeAfterExchange = false
    /// What the client sent after the current request could not be read: 400 after it.
    private var unreadableAfterExchange = false
    /// Why the connection ended, when the gateway ended it (the end record's words).
    private var departure: String?
    /// The connection to the last destination, kept for the client's next request there
    /// (direct connections only; closed with the client's).
    var keptUpstream: (any Channel)?
    private var idleTimer: Scheduled<Void>?
    weak var clientContext: ChannelHandlerContext?

    init(gateway: GatewayContext, proxied: ProxiedConnection?, authentication: HTTPProxyAuthentication) {
        self.gateway = gateway
        self.proxied = proxied
        self.authentication = authentication
    }

    var via: String { "1.1 \(gateway.audit?.instance ?? "identgate")" }

    func handlerAdded(context: ChannelHandlerContext) {
        clientContext = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        clientLeft(context: context)
    }

    // MARK: The client's side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch state {
        case .closed:
            return
        case .idle where queued.isEmpty:
            handle(part, context: context)
        case .idle:
            queued.append(part)
        case .preparing(let exchange):
            // The request's own body and end wait with it for the destination; what comes
            // after them is the next request's.
            if exchange.waitingComplete || !queued.isEmpty {
                queued.append(part)
            } else {
                exchange.waiting.append(part)
                if case .end = part { exchange.waitingComplete = true }
            }
        case .forwarding(let exchange):
            if exchange.requestDone || !queued.isEmpty {
                queued.append(part)
            } else {
                forwardRequestPart(part, exchange: exchange, context: context)
            }
        }
    }

    func read(context: ChannelHandlerContext) {
        guard wantsClientBytes else {
            readPending = true
            return
        }
        context.read()
    }

    /// More of the client's bytes are wanted: between requests, or while the current
    /// request's body goes to a destination that can take it.
    private var wantsClientBytes: Bool {
        guard queued.isEmpty else { return false }
        switch state {
        case .idle: return true
        case .preparing, .closed: return false
        case .forwarding(let exchange): return !exchange.requestDone && exchange.upstream?.isWritable == true
        }
    }

    func resumeClientReads(context: ChannelHandlerContext) {
        if readPending, wantsClientBytes {
            readPending = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .forwarding(let exchange) = state { exchange.upstream?.read() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Shutting down: between requests close now; else after this response.
            departure = ClientDeparture.gatewayStopped
            if case .idle = state { context.close(promise: nil) } else { closeAfterExchange = true }
        case is IdleStateHandler.IdleStateEvent:
            // --idle-timeout, as for a relay: nothing moved on the client's connection.
            departure = "idle timeout: no bytes either way for the --idle-timeout"
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            if case .forwarding(let exchange) = state, exchange.requestDone {
                closeAfterExchange = true
            } else {
                context.close(promise: nil)
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // What came after the request did not parse (bytes past its Content-Length, say):
        // nothing after it can be trusted. The exchange under way ends first, then 400.
        guard error is HTTPParserError else { return context.close(promise: nil) }
        switch state {
        case .idle: answer(.badRequest, exchange: nil, context: context)
        case .preparing, .forwarding: unreadableAfterExchange = true
        case .closed: break
        }
    }

    /// A request part taken in turn: a head starts an exchange.
    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        guard case .head(let head) = part else { return }  // a stray end after an answered request
        idleTimer?.cancel()
        let target: ProxyRequestTarget
        do {
            target = try ProxyRequestTarget.parse(method: head.method.rawValue, target: head.uri)
        } catch {
            return answer(error.status, exchange: nil, context: context)
        }
        // Each request's head has the first one's bounds (llhttp bounds its size).
        guard head.headers.count <= HTTPFrontHandler.maximumHeaderCount else {
            return answer(.headersTooLarge, exchange: nil, context: context)
        }
        let fields = head.headers.map { (name: $0.name, value: $0.value) }
        guard case .forward(let host, let port, let originForm) = target, head.method != .CONNECT,
            ForwardedHeaders.framingIsForwardable(fields), !head.headers.contains(name: "upgrade")
        else {
            // A CONNECT after a forwarded request, a coding other than chunked, or an
            // upgrade (WebSocket over plain HTTP): not served on a forwarding connection.
            return answer(.notImplemented, exchange: nil, context: context)
        }
        if ForwardedHeaders.closesAfter(fields, minorVersion: head.version.minor) { closeAfterExchange = true }
        let forwardedHead = HTTPRequestHead(
            version: .http1_1, method: head.method, uri: originForm,
            headers: HTTPHeaders(ForwardedHeaders.forwarded(fields, via: via, host: port == 80 ? "\(host)" : "\(host):\(port)")))
        let ended = context.eventLoop.makePromise(of: Void.self)
        context.channel.closeFuture.cascade(to: ended)
        var setup = SessionSetup(
            gateway: gateway, id: gateway.nextSessionID(), frontDoor: .http(minorVersion: head.version.minor),
            admission: SessionAdmission(policy: gateway.policy, clientClosed: ended.futureResult), perMessage: nil)
        setup.httpRequest = HTTPRequestLine(method: head.method.rawValue, target: head.uri)
        let exchange = ForwardedExchange(setup: setup, head: forwardedHead, clientMinorVersion: head.version.minor, ended: ended)
        state = .preparing(exchange)
        authentication.check(head, context: context) { outcome in
            guard case .preparing(let current) = self.state, current === exchange else { return }
            switch outcome {
            case .anonymous: self.connect(exchange, host: host, port: port, identity: nil, context: context)
            case .authenticated(let identity): self.connect(exchange, host: host, port: port, identity: identity, context: context)
            case .challenge(let challenges): self.answer(.proxyAuthenticationRequired, challenges: challenges, exchange: nil, context: context)
            case .unreadable(let status): self.answer(status, exchange: nil, context: context)
            }
        }
    }

    private func connect(_ exchange: ForwardedExchange, host: ProxyTargetHost, port: UInt16, identity: HTTPProxyAuthentication.Identity?, context: ChannelHandlerContext) {
        guard gateway.admitToAuditLog() else { return answer(.serviceUnavailable, exchange: nil, context: context) }
        guard let facts = HTTPFrontHandler.facts(host: host, port: port, identity: identity, channel: context.channel, proxied: proxied)
        else { return context.close(promise: nil) }
        gateway.metrics?.sessionStarted(.connect, .http, closed: exchange.ended.futureResult)
        let connector = UpstreamConnector(exchange.setup, facts: facts, eventLoop: context.eventLoop, reuse: takeKeptUpstream) {
            outcome in
            exchange.connector = nil
            switch outcome {
            case .connected(let channel, let parent):
                exchange.allowed = true
                exchange.parent = parent
                self.startForwarding(exchange, upstream: channel, context: context)
            case .failed(let failure, let recordEnd):
                exchange.allowed = recordEnd
                self.answer(ProxyStatus(failure), exchange: exchange, reason: "failed: \(failure)", context: context)
            case .cancelled(let recordEnd):
                exchange.allowed = recordEnd
                self.end(exchange, reason: ClientDeparture.closed)
            }
        }
        exchange.connector = connector
        connector.start()
    }

    private func startForwarding(_ exchange: ForwardedExchange, upstream: any Channel, context: ChannelHandlerContext) {
        guard case .preparing(let current) = state, current === exchange, context.channel.isActive else {
            upstream.close(promise: nil)
            return end(exchange, reason: ClientDeparture.closed)
        }
        var encoding = HTTPRequestEncoder.Configuration()
        // The body goes on framed as the client framed it (Content-Length or chunked).
        encoding.automaticallySetFramingHeaders = false
        do {
            if let kept = try? upstream.pipeline.syncOperations.handler(type: UpstreamResponseHandler.self) {
                kept.exchange = ObjectIdentifier(exchange)  // a kept connection: its handlers are in place
            } else {
                try upstream.pipeline.syncOperations.addHTTPClientHandlers(encoderConfiguration: encoding)
                try upstream.pipeline.syncOperations.addHandler(
                    UpstreamResponseHandler(forwarder: NIOLoopBound(self, eventLoop: context.eventLoop), exchange: ObjectIdentifier(exchange)))
            }
        } catch {
            upstream.close(promise: nil)
            return answer(.badGateway, exchange: exchange, reason: "failed: \(error)", context: context)
        }
        exchange.upstream = upstream
        state = .forwarding(exchange)
        var head = exchange.head
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            // Decided and connected: the client may send its body now. (The destination
            // is not asked to continue again.)
            head.headers.remove(name: "expect")
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: exchange.head.version, status: .continue))), promise: nil)
        }
        upstream.write(HTTPClientRequestPart.head(head), promise: nil)
        let waiting = exchange.waiting
        exchange.waiting = []
        for part in waiting { forwardRequestPart(part, exchange: exchange, context: context) }
        upstream.flush()
        upstream.read()
        resumeClientReads(context: context)
    }

    private func forwardRequestPart(_ part: HTTPServerRequestPart, exchange: ForwardedExchange, context: ChannelHandlerContext) {
        guard let upstream = exchange.upstream else {
            exchange.waiting.append(part)
            return
        }
        switch part {
        case .head:
            queued.append(part)
        case .body(let bytes):
            exchange.bytesFromClient += UInt64(bytes.readableBytes)
            upstream.writeAndFlush(HTTPClientRequestPart.body(.byteBuffer(bytes)), promise: nil)
        case .end(let trailers):
            exchange.requestDone = true
            upstream.writeAndFlush(HTTPClientRequestPart.end(trailers), promise: nil)
        }
    }

    // MARK: Ends

    func completeExchange(_ exchange: ForwardedExchange, reason: String, context: ChannelHandlerContext) {
        if let upstream = exchange.upstream, upstream.isActive, exchange.requestDone, exchange.parent == nil,
            !exchange.responseEndsAtClose, !exchange.destinationCloses, !closeAfterExchange, !unreadableAfterExchange
        {
            // Kept for the next request: read on, so that its close is seen while it waits.
            exchange.upstream = nil
            keptUpstream?.close(promise: nil)
            keptUpstream = upstream
            upstream.read()
        }
        end(exchange, reason: reason)
        if unreadableAfterExchange {
            state = .idle
            return answer(.badRequest, exchange: nil, context: context)
        }
        guard !closeAfterExchange else {
            state = .closed
            context.close(promise: nil)
            return
        }
        state = .idle
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(in: gateway.configuration.negotiationTimeout) {
            if case .idle = self.state { context.close(promise: nil) }
        }
        while case .idle = state, !queued.isEmpty {
            handle(queued.removeFirst(), context: context)
        }
        resumeClientReads(context: context)
    }

    /// The exchange's end: its destination connection closed, its place under the limits
    /// given back, and (if a decision allowed it) its session-end record.
    func end(_ exchange: ForwardedExchange, reason: String, reply: Int? = nil) {
        guard exchange.over() else { return }
        exchange.connector?.cancel()
        exchange.connector = nil
        exchange.upstream?.close(promise: nil)
        exchange.upstream = nil
        exchange.ended.succeed()
        guard exchange.allowed else { return }
        exchange.allowed = false
        gateway.audit?.record(
            .sessionEnd(
                session: exchange.setup.id, reason: reason, bytesFromClient: exchange.bytesFromClient,
                bytesToClient: exchange.bytesToClient, duration: .now - exchange.started,
                reply: reply ?? exchange.responseStatus.map { Int($0.code) }, parent: exchange.parent))
    }

    /// The kept connection, if it goes to `destination` and is still open.
    private func takeKeptUpstream(_ destination: IPEndpoint) -> (any Channel)? {
        guard let kept = keptUpstream, kept.isActive, kept.remoteAddress?.ipEndpoint == destination else { return nil }
        keptUpstream = nil
        return kept
    }

    private func clientLeft(context: ChannelHandlerContext) {
        keptUpstream?.close(promise: nil)
        keptUpstream = nil
        switch state {
        case .preparing(let exchange), .forwarding(let exchange):
            state = .closed
            if let connector = exchange.connector {
                // Reports `.cancelled`, which ends the exchange (recording its end if a
                // decision allowed it).
                connector.cancel()
            }
            end(
                exchange,
                reason: departure ?? (exchange.responseStatus == nil ? ClientDeparture.closed : "client closed the connection"))
        case .idle, .closed:
            state = .closed
        }
    }

    /// An answer of the proxy's own, then the close.
    func answer(
        _ status: ProxyStatus, challenges: [String] = [], exchange: ForwardedExchange?, reason: String? = nil, context: ChannelHandlerContext
    ) {
        if let exchange { end(exchange, reason: reason ?? "failed", reply: status.code) }
        state = .closed
        let head = HTTPResponseHead(
            version: .init(major: 1, minor: exchange?.clientMinorVersion ?? 1), status: HTTPResponseStatus(statusCode: status.code),
            headers: HTTPHeaders(ProxyReply.fields(status, challenges: challenges, via: via)))
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: ProxyReply.body(status))))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
