import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NetAddress

/// `--metrics-listen`: a small HTTP/1.1 server on its own socket (never the SOCKS port)
/// for `/metrics` (Prometheus' text format, rendered by swift-prometheus) and `/healthz`
/// (200 once serving with a policy loaded; 503 before that and while the audit log is
/// failing closed). Bound like the SOCKS listeners: as root, before the privilege drop.
///
/// Bounded like everything a peer causes: at most `maximumConnections` at once (more are
/// closed at accept), each closed after `idleTimeout` without a request, requests only
/// GET and HEAD with no body, headers within NIO's parser limit.
public final class MetricsEndpoint: Sendable {
    static let maximumConnections = 32
    static let idleTimeout: TimeAmount = .seconds(30)

    private let metrics: GatewayMetrics
    private let gateway: GatewayServer
    private let channel: NIOLockedValueBox<(any Channel)?> = .init(nil)
    private let connections = NIOLockedValueBox(0)

    public init(metrics: GatewayMetrics, gateway: GatewayServer) {
        self.metrics = metrics
        self.gateway = gateway
    }

    /// Serves on `descriptor` (bound and listening already) or binds `endpoint`; returns
    /// the address served on.
    public func start(_ endpoint: IPEndpoint, adopting descriptor: Int32?, group: any EventLoopGroup) async throws -> IPEndpoint {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    guard self.admit(channel) else { throw ChannelError.ioOnClosedChannel }
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(endpoint: self))
                }
            }
        let channel: any Channel
        do {
            channel =
                if let descriptor {
                    try await bootstrap.withBoundSocket(descriptor).get()
                } else {
                    try await bootstrap.bind(to: SocketAddress(endpoint)).get()
                }
        } catch {
            throw ListenError(endpoint: endpoint, reason: "metrics: \(error)")
        }
        self.channel.withLockedValue { $0 = channel }
        let bound = channel.localAddress?.ipEndpoint ?? endpoint
        gateway.addOwnListener(bound)
        return bound
    }

    public func stop() async {
        let channel = self.channel.withLockedValue { channel in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
    }

    /// One more connection, unless `maximumConnections` are open; counted until it closes.
    private func admit(_ channel: any Channel) -> Bool {
        let admitted = connections.withLockedValue { open in
            guard open < Self.maximumConnections else { return false }
            open += 1
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [connections] _ in connections.withLockedValue { $0 -= 1 } }
        }
        return admitted
    }

    /// `/metrics`: the exposition, with the counts read at scrape time brought up to date.
    func exposition() -> [UInt8] {
        metrics.refresh(bindListeners: gateway.openBindListeners, acceptFailures: gateway.acceptFailures, audit: gateway.auditHealth)
        return metrics.registry.emitToBuffer()
    }

    /// `/healthz`: the status and a line saying why.
    func health() -> (HTTPResponseStatus, String) {
        guard metrics.isReady else { return (.serviceUnavailable, "starting\n") }
        if let audit = gateway.auditHealth, audit.refusingRequests {
            return (.serviceUnavailable, "refusing requests: the audit log \(audit.failure.map { "cannot be written (\($0))" } ?? "is too far behind")\n")
        }
        return (.ok, "ok\n")
    }
}

/// One HTTP connection to the metrics endpoint.
private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: MetricsEndpoint
    private var request: HTTPRequestHead?

    init(endpoint: MetricsEndpoint) {
        self.endpoint = endpoint
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let body: [UInt8]
        var contentType = "text/plain; charset=utf-8"
        var allow: String?
        switch (head.method, path) {
        case (.GET, "/metrics"), (.HEAD, "/metrics"):
            status = .ok
            body = endpoint.exposition()
            contentType = "text/plain; version=0.0.4; charset=utf-8"
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            let (healthStatus, text) = endpoint.health()
            status = healthStatus
            body = Array(text.utf8)
        case (_, "/metrics"), (_, "/healthz"):
            status = .methodNotAllowed
            body = Array("only GET and HEAD\n".utf8)
            allow = "GET, HEAD"
        default:
            status = .notFound
            body = Array("not found; try /metrics or /healthz\n".utf8)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        if let allow { headers.add(name: "Allow", value: allow) }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let sent = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            sent.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
