import AccessPolicy
import HTTPProxyWire
import NIOCore
import NIOHTTP1
import NetAddress
import PrintableText
import SOCKSSession

#if canImport(Glibc)
    import Glibc
#endif

/// The HTTP front door: reads one proxy request's head (NIOHTTP1's decoder, in front of
/// this handler) under the negotiation deadline, checks `Proxy-Authorization`, and hands
/// a CONNECT to the `ConnectSessionHandler` a SOCKS CONNECT goes to: the same policy,
/// ident, limits, parents, relay and audit records; only the replies are HTTP's.
///
/// Answers of its own (400, 407, 408, 414, 431, 501, 503) close the connection: nothing
/// after a request the proxy refused to read is trusted to be framed as the client meant.
final class HTTPFrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    /// At most this many header fields in a head (431 beyond); NIOHTTP1's parser bounds
    /// the head's size (80 KiB, 431 too).
    static let maximumHeaderCount = 100

    private enum State {
        /// Waiting for the head.
        case readingHead
        /// The head was read; waiting for its end (CONNECT has no body).
        case readingEnd(HTTPRequestHead, host: ProxyTargetHost, port: UInt16)
        /// Checking the password on the thread pool.
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
    private var state = State.readingHead

    init(gateway: GatewayContext, deadline: NIODeadline, proxied: ProxiedConnection?) {
        self.gateway = gateway
        self.deadlineTime = deadline
        self.proxied = proxied
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
            // CONNECT has no body; a forwarded request's is not read (yet: 501 above).
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
            if case .handedOver = state { return context.fireUserInboundEventTriggered(event) }
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
            // Forwarding plain-HTTP requests is not built yet: CONNECT only.
            answer(.notImplemented, context: context)
        }
    }

    /// `Proxy-Authorization: Basic` when the listener takes passwords (`--methods`
    /// password); without one, 407 unless it also serves anonymous clients (`none`).
    private func authenticate(_ head: HTTPRequestHead, host: ProxyTargetHost, port: UInt16, context: ChannelHandlerContext) {
        let methods = gateway.offeredMethods
        let takesPasswords = methods.contains(.usernamePassword) && gateway.credentials != nil
        let credentials: BasicCredentials?
        do {
            credentials = try head.headers["Proxy-Authorization"].first.flatMap { value throws(ProxyRequestError) in
                try BasicCredentials.parse(value)
            }
        } catch {
            return answer(error.status, context: context)
        }
        guard takesPasswords, let credentials else {
            guard methods.contains(.noAuthentication) else { return challenge(context: context, takesPasswords: takesPasswords) }
            return handOver(head, host: host, port: port, user: nil, context: context)
        }
        state = .checkingPassword
        let store = gateway.credentials
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            store?.verify(user: credentials.user, password: credentials.password) ?? false
        }.assumeIsolated().whenComplete { result in
            guard case .checkingPassword = self.state, context.channel.isActive else { return }
            guard (try? result.get()) == true else {
                self.gateway.repeated.occurred(
                    .passwordFailure, on: context.eventLoop,
                    metadata: ["user": "\(DisplayText.escaped(credentials.user))", "client": "\(context.remoteAddressText)"])
                return self.challenge(context: context, takesPasswords: true)
            }
            self.handOver(head, host: host, port: port, user: credentials.user, context: context)
        }
    }

    /// 407 with what this listener accepts.
    private func challenge(context: ChannelHandlerContext, takesPasswords: Bool) {
        let challenges = takesPasswords ? [#"Basic realm="identgate", charset="UTF-8""#] : []
        answer(.proxyAuthenticationRequired, challenges: challenges, context: context)
    }

    private func handOver(
        _ head: HTTPRequestHead, host: ProxyTargetHost, port: UInt16, user: String?, context: ChannelHandlerContext
    ) {
        guard gateway.admitToAuditLog() else { return answer(.serviceUnavailable, context: context) }
        guard let peer = context.channel.remoteAddress?.ipEndpoint, let local = context.channel.localAddress?.ipEndpoint else {
            return context.close(promise: nil)
        }
        deadline?.cancel()
        let destination: RequestFacts.Destination =
            switch host {
            case .address(let address): .address(address)
            case .name(let name): .hostName(name)
            }
        var facts = RequestFacts(
            version: .http, command: .connect, client: proxied?.client ?? peer, listener: proxied?.frontEnd ?? local,
            destination: destination, destinationPort: port, claimedUser: user, authMethod: user == nil ? .none : .password,
            time: Int64(Glibc.time(nil)))
        if proxied?.client != nil { facts.balancer = proxied?.balancer }
        let setup = SessionSetup(
            gateway: gateway, id: gateway.nextSessionID(), frontDoor: .http(minorVersion: head.version.minor),
            admission: SessionAdmission(policy: gateway.policy, clientClosed: context.channel.closeFuture), perMessage: nil)
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
