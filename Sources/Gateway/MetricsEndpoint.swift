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
/// Bounded like everything a peer causes, in memory and in time (docs/architecture.md,
/// "The metrics endpoint under attack"):
/// - at most `maximumConnections` at once; when all are taken, a new connection takes the
///   slot of the one that has waited longest without a complete request (a slow-loris
///   holds nothing for long, and `/healthz` answers while `/metrics` is besieged);
/// - one request in flight: the next is read only once the answer to the last has been
///   written to the socket (a client that pipelines and never reads holds one answer);
/// - deadlines a trickle cannot extend: `idleTimeout` for the first byte of a request,
///   `requestTimeout` from it to the request's end, `responseTimeout` for the answer;
/// - at most `maximumRequestBytes` per request, read `readSize` at a time;
/// - requests only GET and HEAD with no body.
public final class MetricsEndpoint: Sendable {
    static let maximumConnections = 32
    static let idleTimeout: TimeAmount = .seconds(30)
    static let requestTimeout: TimeAmount = .seconds(10)
    static let responseTimeout: TimeAmount = .seconds(30)
    static let maximumRequestBytes = 16 * 1024
    static let readSize = 4096

    private let metrics: GatewayMetrics
    private let gateway: GatewayServer
    private let channel: NIOLockedValueBox<(any Channel)?> = .init(nil)
    let connections = MetricsConnections(capacity: MetricsEndpoint.maximumConnections)

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
                    guard self.connections.admit(channel) else { throw ChannelError.ioOnClosedChannel }
                    try channel.syncOptions?.setOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.readSize))
                    let guardian = MetricsConnectionGuard(connections: self.connections)
                    try channel.pipeline.syncOperations.addHandler(guardian)
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(endpoint: self, guardian: guardian))
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

    /// `/metrics`: the exposition, with the counts read at scrape time brought up to date.
    func exposition() -> [UInt8] {
        metrics.refresh(bindListeners: gateway.openBindListeners, acceptFailures: gateway.acceptFailures, audit: gateway.auditHealth)
        return metrics.registry.emitToBuffer()
    }

    /// `/healthz`: the status and a line saying why.
    func health() -> (HTTPResponseStatus, String) {
        guard metrics.isReady else { return (.serviceUnavailable, "starting\n") }
        if let note = metrics.drainingNote.withLockedValue({ $0 }) {
            metrics.setDrainingSessions(metrics.openSessions)
            return (.serviceUnavailable, "draining: \(note); \(metrics.openSessions) sessions still open\n")
        }
        if let audit = gateway.auditHealth, audit.refusingRequests {
            return (.serviceUnavailable, "refusing requests: the audit log \(audit.failure.map { "cannot be written (\($0))" } ?? "is too far behind")\n")
        }
        return (.ok, "ok\n")
    }
}

/// The connections open to the metrics endpoint, and how long each has waited for a
/// complete request: the one that has waited longest gives its slot to a newcomer.
final class MetricsConnections: Sendable {
    private struct Entry {
        let channel: any Channel
        /// Since when it waits for a request (nil: a request is being answered).
        var waitingSince: NIODeadline?
    }

    let capacity: Int
    private let entries = NIOLockedValueBox<[ObjectIdentifier: Entry]>([:])
    /// Connections closed to make room for newer ones (for tests).
    let evicted = NIOLockedValueBox(0)

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { entries.withLockedValue { $0.count } }

    /// Takes a slot for `channel`, closing the longest-waiting connection if all are
    /// taken; false if every slot is answering a request (each bounded by its deadline).
    func admit(_ channel: any Channel) -> Bool {
        let key = ObjectIdentifier(channel)
        let outcome = entries.withLockedValue { entries -> (admitted: Bool, evict: (any Channel)?) in
            var evict: (any Channel)?
            if entries.count >= capacity {
                guard let oldest = entries.filter({ $0.value.waitingSince != nil })
                    .min(by: { ($0.value.waitingSince ?? .distantFuture) < ($1.value.waitingSince ?? .distantFuture) })
                else { return (false, nil) }
                entries[oldest.key] = nil
                evict = oldest.value.channel
            }
            entries[key] = Entry(channel: channel, waitingSince: .now())
            return (true, evict)
        }
        guard outcome.admitted else { return false }
        if let evicted = outcome.evict {
            self.evicted.withLockedValue { $0 += 1 }
            evicted.close(promise: nil)
        }
        channel.closeFuture.whenComplete { [entries] _ in
            entries.withLockedValue { entries in
                if entries[key].map({ $0.channel === channel }) == true { entries[key] = nil }
            }
        }
        return true
    }

    func setWaiting(_ channel: any Channel, since: NIODeadline?) {
        entries.withLockedValue { entries in
            let key = ObjectIdentifier(channel)
            if entries[key].map({ $0.channel === channel }) == true { entries[key]?.waitingSince = since }
        }
    }
}

/// First in a metrics connection's pipeline: the byte cap and the deadlines, which count
/// from when a request is awaited, not from the last byte, so a trickle cannot extend
/// them. The request handler tells it when a request is complete and when its answer
/// has been written.
final class MetricsConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum Phase {
        /// No byte of the next request yet.
        case idle
        /// Some bytes of a request, not all.
        case receiving
        /// A request is being answered.
        case answering
    }

    private let connections: MetricsConnections
    private var phase = Phase.idle
    private var bytes = 0
    private var deadline: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(connections: MetricsConnections) {
        self.connections = connections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        arm(MetricsEndpoint.idleTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes += unwrapInboundIn(data).readableBytes
        guard bytes <= MetricsEndpoint.maximumRequestBytes else {
            // Past the cap no request of ours can be this long: 431, raw (the decoder may
            // be in the middle of a head), and close.
            deadline?.cancel()
            let answer = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: answer))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
            return
        }
        if phase == .idle {
            phase = .receiving
            arm(MetricsEndpoint.requestTimeout)
        }
        context.fireChannelRead(data)
    }

    /// A whole request has been read; its answer is being prepared.
    func requestComplete() {
        guard let context else { return }
        phase = .answering
        bytes = 0
        connections.setWaiting(context.channel, since: nil)
        arm(MetricsEndpoint.responseTimeout)
    }

    /// The answer is written and no other request is waiting: the next one is awaited.
    func awaitingNext() {
        guard let context else { return }
        phase = .idle
        connections.setWaiting(context.channel, since: .now())
        arm(MetricsEndpoint.idleTimeout)
    }

    private func arm(_ timeout: TimeAmount) {
        deadline?.cancel()
        guard let context else { return }
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            self?.context?.close(promise: nil)
        }
    }
}

/// One HTTP connection to the metrics endpoint: one request answered at a time, the next
/// only once the last answer has left (NIO's pipelining handler reads no further while an
/// answer is pending).
private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: MetricsEndpoint
    private let guardian: MetricsConnectionGuard
    private var request: HTTPRequestHead?
    /// An answer is being written; a request completed meanwhile waits here.
    private var answering = false
    private var waiting: HTTPRequestHead?

    init(endpoint: MetricsEndpoint, guardian: MetricsConnectionGuard) {
        self.endpoint = endpoint
        self.guardian = guardian
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
            guardian.requestComplete()
            if answering {
                waiting = head
            } else {
                respond(to: head, context: context)
            }
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        answering = true
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
        // Completes when the answer has been written to the socket, not merely queued.
        let sent = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        sent.assumeIsolated().whenComplete { result in
            self.answering = false
            guard case .success = result, keepAlive else { return context.close(promise: nil) }
            if let next = self.waiting {
                self.waiting = nil
                self.respond(to: next, context: context)
            } else {
                self.guardian.awaitingNext()
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
