import AccessPolicy
import AuditLog
import HTTPProxyWire
import NIOCore
import NIOHTTP1
import NetAddress
import PrintableText
import SOCKSSession

#if canImport(Glibc)
    import Glibc
#endif

/// The HTTP front door: reads the first proxy request's head (NIOHTTP1's decoder, in front
/// of this handler) under the negotiation deadline. A CONNECT, once `Proxy-Authorization`
/// is checked, goes to the `ConnectSessionHandler` a SOCKS CONNECT goes to: the same
/// policy, ident, limits, parents, relay and audit records; only the replies are HTTP's.
/// An absolute-form request makes the connection a forwarding one (`HTTPForwardHandler`).
///
/// Answers of its own (400, 407, 408, 414, 431, 503) close the connection: nothing after a
/// request the proxy refused to read is trusted to be framed as the client meant.
final class HTTPFrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    /// At most this many header fields in a head (431 beyond); NIOHTTP1's parser bounds
    /// the head's size (80 KiB, 431 too).
    static let maximumHeaderCount = 100

    private enum State {
        /// Waiting for the head.
        case readingHead
        /// The head was read; waiting for its end (CONNECT has no body).
        case readingEnd(HTTPRequestHead, host: ProxyTargetHost, port: UInt16)
        /// Checking who the client is (a password, on the thread pool).
        case checkingPassword
        /// The session handler has the connection; bytes the decoder held are passed on.
        case handedOver
        /// Answered and closing: nothing more is read.
        case answered
    }

    private let gateway: GatewayContext
    private let deadlineTime: NIODeadline
    private var deadline: Scheduled<Void>?
    private let proxied: ProxiedConnection?
    private let authentication: HTTPProxyAuthentication
    private var state = State.readingHead

    init(gateway: GatewayContext, deadline: NIODeadline, proxied: ProxiedConnection?) {
        self.gateway = gateway
        self.deadlineTime = deadline
        self.proxied = proxied
        self.authentication = HTTPProxyAuthentication(gateway: gateway)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadline = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadlineTime) {
            self.gateway.repeated.occurred(
                .negotiationTimeout, on: context.eventLoop, metadata: ["client": "\(context.remoteAddressText)"])
            self.answer(.requestTimeout, context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .handedOver:
            // What the client sent after its CONNECT (a TLS ClientHello, say), released
            // by the decoder as it left: the session's early bytes.
            context.fireChannelRead(data)
            return
        case .answered, .checkingPassword:
            return
        case .readingHead, .readingEnd:
            break
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard case .readingHead = state else { return answer(.badRequest, context: context) }
            readHead(head, context: context)
        case .body:
            // CONNECT has no body (a forwarded request's goes to the forwarding handler).
            break
        case .end:
            guard case .readingEnd(let head, let host, let port) = state else { return }
            authenticate(head, host: host, port: port, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard case .readingHead = state else { return context.close(promise: nil) }
        // The parser's word on a malformed head: RFC 9112's framing errors (both
        // Content-Length and Transfer-Encoding, two different lengths, a bare CR) are 400,
        // never a request passed on.
        gateway.logger.debug(
            "HTTP request not readable", metadata: ["client": "\(context.remoteAddressText)", "error": "\(error)"])
        answer((error as? HTTPParserError) == .headerOverflow ? .headersTooLarge : .badRequest, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent, ChannelEvent.inputClosed:
            // Shutting down, or the client stopped sending before its request was whole.
            // Draining after a takeover, a request on its way is still answered here.
            if case .handedOver = state { return context.fireUserInboundEventTriggered(event) }
            if event is ChannelShouldQuiesceEvent, gateway.isDraining { return }
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func readHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard head.headers.count <= Self.maximumHeaderCount else { return answer(.headersTooLarge, context: context) }
        let target: ProxyRequestTarget
        do {
            target = try ProxyRequestTarget.parse(method: head.method.rawValue, target: head.uri)
        } catch {
            gateway.logger.debug(
                "HTTP proxy request refused",
                metadata: ["client": "\(context.remoteAddressText)", "reason": "\(DisplayText.escaped(error.reason))"])
            return answer(error.status, context: context)
        }
        switch target {
        case .tunnel(let host, let port):
            state = .readingEnd(head, host: host, port: port)
        case .forward:
            forward(head, context: context)
        }
    }

    private func authenticate(_ head: HTTPRequestHead, host: ProxyTargetHost, port: UInt16, context: ChannelHandlerContext) {
        state = .checkingPassword
        authentication.check(head, context: context) { outcome in
            guard case .checkingPassword = self.state, context.channel.isActive else { return }
            switch outcome {
            case .anonymous: self.handOver(head, host: host, port: port, identity: nil, context: context)
            case .authenticated(let identity): self.handOver(head, host: host, port: port, identity: identity, context: context)
            case .challenge(let challenges): self.answer(.proxyAuthenticationRequired, challenges: challenges, context: context)
            case .unreadable(let status): self.answer(status, context: context)
            }
        }
    }

    private func handOver(
        _ head: HTTPRequestHead, host: ProxyTargetHost, port: UInt16, identity: HTTPProxyAuthentication.Identity?, context: ChannelHandlerContext
    ) {
        guard gateway.admitToAuditLog() else { return answer(.serviceUnavailable, context: context) }
        guard let facts = Self.facts(host: host, port: port, identity: identity, channel: context.channel, proxied: proxied) else {
            return context.close(promise: nil)
        }
        deadline?.cancel()
        var setup = SessionSetup(
            gateway: gateway, id: gateway.nextSessionID(), frontDoor: .http(minorVersion: head.version.minor),
            admission: SessionAdmission(policy: gateway.policy, clientClosed: context.channel.closeFuture), perMessage: nil)
        setup.httpRequest = HTTPRequestLine(method: "CONNECT", target: nil)
        gateway.metrics?.sessionStarted(.connect, .http, closed: context.channel.closeFuture)
        state = .handedOver
        let pipeline = context.pipeline.syncOperations
        do {
            try pipeline.addHandler(ConnectSessionHandler(setup, facts: facts, early: EarlyClientData()), position: .after(self))
            // The decoder leaves first, releasing what it held back after the CONNECT
            // through this handler to the session's; then this handler leaves.
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            pipeline.removeHandler(decoder, promise: nil)
        } catch {
            return context.close(promise: nil)
        }
        pipeline.removeHandler(context: context, promise: nil)
    }

    /// An absolute-form request: the connection becomes a forwarding one. NIOHTTP1's
    /// response encoder and an `HTTPForwardHandler` take this handler's place, and the head
    /// goes to it; the parts after it follow by themselves.
    private func forward(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        deadline?.cancel()
        state = .handedOver
        var encoding = HTTPResponseEncoder.Configuration()
        // Responses go on framed as the destination framed them.
        encoding.automaticallySetFramingHeaders = false
        let forwarder = HTTPForwardHandler(gateway: gateway, proxied: proxied, authentication: authentication)
        do {
            try context.pipeline.syncOperations.addHandler(HTTPResponseEncoder(configuration: encoding), position: .before(self))
            try context.pipeline.syncOperations.addHandler(forwarder, position: .after(self))
            // --idle-timeout bounds a forwarding connection as it bounds a relay.
            if let idleTimeout = gateway.configuration.idleTimeout {
                try context.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout), position: .first)
            }
        } catch {
            return context.close(promise: nil)
        }
        context.fireChannelRead(wrapInboundOut(.head(head)))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// The facts of an HTTP proxy request to `host`:`port`: the same as a SOCKS CONNECT's,
    /// with `version http`; nil if the connection has already gone.
    static func facts(
        host: ProxyTargetHost, port: UInt16, identity: HTTPProxyAuthentication.Identity?, channel: any Channel,
        proxied: ProxiedConnection?
    ) -> RequestFacts? {
        guard let peer = channel.remoteAddress?.ipEndpoint, let local = channel.localAddress?.ipEndpoint else { return nil }
        return facts(host: host, port: port, identity: identity, peer: peer, local: local, proxied: proxied)
    }

    /// The same, for a connection from `peer` to `local` (the direct driver's too).
    static func facts(
        host: ProxyTargetHost, port: UInt16, identity: HTTPProxyAuthentication.Identity?, peer: IPEndpoint, local: IPEndpoint,
        proxied: ProxiedConnection?
    ) -> RequestFacts {
        let destination: RequestFacts.Destination =
            switch host {
            case .address(let address): .address(address)
            case .name(let name): .hostName(name)
            }
        var facts = RequestFacts(
            version: .http, command: .connect, client: proxied?.client ?? peer, listener: proxied?.frontEnd ?? local,
            destination: destination, destinationPort: port, claimedUser: identity?.user, authMethod: identity?.method ?? .none,
            time: Int64(Glibc.time(nil)))
        facts.gssapi = identity?.gssapi
        facts.passwordSource = identity?.passwordSource
        if proxied?.client != nil { facts.balancer = proxied?.balancer }
        return facts
    }

    private func answer(_ status: ProxyStatus, challenges: [String] = [], context: ChannelHandlerContext) {
        switch state {
        case .answered, .handedOver: return
        case .readingHead, .readingEnd, .checkingPassword: break
        }
        state = .answered
        deadline?.cancel()
        var bytes = context.channel.allocator.buffer(capacity: 256)
        bytes.writeBytes(ProxyReply.status(status, challenges: challenges))
        context.writeAndFlush(NIOAny(bytes)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
