import AccessPolicy
import AuditLog
import IdentProtocol
import Logging
import NIOCore
import NIOPosix
import NetAddress
import PrintableText

/// An RFC 1413 client on SwiftNIO. It connects to port 113 of the SOCKS client's
/// address from the gateway address the client reached (an identd answers only about
/// connections between the two hosts of the query connection), sends
/// `<client port> , <gateway port>`, and reads one line under a deadline. What the line
/// means is `IdentReply.answer` (IdentProtocol); this only does the I/O. It never blocks
/// an event loop.
public struct IdentClient: Sendable {
    let group: any EventLoopGroup
    let port: Int
    let logger: Logger
    let metrics: GatewayMetrics?

    /// `port` is 113 except in tests.
    public init(group: any EventLoopGroup, port: Int = 113, logger: Logger, metrics: GatewayMetrics? = nil) {
        self.group = group
        self.port = port
        self.logger = logger
        self.metrics = metrics
    }

    /// The engine's `IdentLookup`.
    public var lookup: IdentLookup {
        { facts, timeoutSeconds in
            if let balancer = facts.balancer {
                // The client's connection ends at the balancer: its identd knows nothing of
                // a connection to us, and asking could only find a wrong one (92, never a
                // guess).
                return IdentAnswer(
                    .failure(.unreachable),
                    detail: "not asked: the client came through the load balancer \(balancer), so its identd cannot answer for it")
            }
            let started = ContinuousClock.now
            let answer = await self.query(
                client: facts.client, listener: facts.listener, timeout: .nanoseconds(Int64(timeoutSeconds * 1e9)))
            if let metrics = self.metrics {
                let outcome: String =
                    switch answer.outcome {
                    case .userID: "user-id"
                    case .failure(let failure): failure.rawValue
                    }
                metrics.identLookup(outcome, after: .now - started)
            }
            self.logger.info(
                "ident lookup",
                metadata: [
                    "client": "\(facts.client)", "outcome": "\(DisplayText.escaped(answer.outcome.description))",
                    "opsys": "\(DisplayText.escaped(answer.opsys, absent: "-"))",
                    "reply": "\(DisplayText.escaped(answer.rawReply, absent: "-"))",
                    "detail": "\(DisplayText.escaped(answer.detail, absent: "-"))",
                    "duration": "\(answer.durationMs.map { "\($0) ms" } ?? "-")",
                ])
            return answer
        }
    }

    /// Asks the identd at `client`'s address who owns `client` → `listener`.
    public func query(client: IPEndpoint, listener: IPEndpoint, timeout: TimeAmount) async -> IdentAnswer {
        let eventLoop = group.any()
        let started = ContinuousClock.now
        let promise = eventLoop.makePromise(of: IdentAnswer.self)
        let query = IdentQuery(serverPort: client.port, clientPort: listener.port)
        eventLoop.execute {
            IdentExchange(query: query, promise: promise, started: started).start(
                on: eventLoop, from: listener.address, to: IPEndpoint(address: client.address, port: UInt16(self.port)),
                timeout: timeout)
        }
        // A decision whose client left is cancelled: the answer is settled now, and the
        // exchange closes its connection to identd as soon as it sees that.
        let answer = await withTaskCancellationHandler {
            try? await promise.futureResult.get()
        } onCancel: {
            promise.succeed(
                IdentAnswer(
                    .failure(.unreachable), detail: "not asked to the end: the client left",
                    durationMs: Self.milliseconds(since: started)))
        }
        return answer
            ?? IdentAnswer(.failure(.unknownError), detail: "lookup failed", durationMs: Self.milliseconds(since: started))
    }

    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - start
        return Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
    }
}

/// One query's life on one event loop: connect, send, read a line, or give up at the
/// deadline. Completes its promise exactly once.
private final class IdentExchange {
    let query: IdentQuery
    let promise: EventLoopPromise<IdentAnswer>
    let started: ContinuousClock.Instant
    var done = false
    var connected = false
    var channel: (any Channel)?

    init(query: IdentQuery, promise: EventLoopPromise<IdentAnswer>, started: ContinuousClock.Instant) {
        self.query = query
        self.promise = promise
        self.started = started
    }

    /// IP_BIND_ADDRESS_NO_PORT (Linux 4.2; <linux/in.h>, not in glibc's headers).
    private static let bindAddressNoPort = ChannelOptions.socket(SocketOptionLevel(IPPROTO_IP), 24)

    func start(on eventLoop: any EventLoop, from local: IPAddress, to identd: IPEndpoint, timeout: TimeAmount) {
        let deadline = eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            // Before the connect completed, identd was not reachable; after, it said nothing.
            self.finish(IdentAnswer(.failure(self.connected ? .timeout : .unreachable), detail: "no answer within \(timeout)"))
        }
        promise.futureResult.assumeIsolated().whenComplete { _ in
            // Answered, timed out or cancelled: the connection to identd ends with it.
            deadline.cancel()
            self.done = true
            self.channel?.close(promise: nil)
        }
        ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            // Bound to an address with port 0, a socket would take a source port for
            // itself alone at bind time, and under load (the port range full of
            // TIME_WAIT) bind fails; this leaves the port to connect, which may share it.
            .channelOption(Self.bindAddressNoPort, value: 1)
            .bind(to: SocketAddress(IPEndpoint(address: local, port: 0)))
            .connect(to: SocketAddress(identd))
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    self.connected = true
                    self.channel = channel
                    guard !self.done else {
                        channel.close(promise: nil)
                        return
                    }
                    do {
                        try channel.pipeline.syncOperations.addHandler(IdentReplyHandler(exchange: self))
                    } catch {
                        self.finish(IdentAnswer(.failure(.unknownError), detail: "\(error)"))
                        return
                    }
                    var line = channel.allocator.buffer(capacity: 16)
                    line.writeString(self.query.line)
                    channel.writeAndFlush(line, promise: nil)
                case .failure(let error):
                    self.finish(IdentAnswer(.failure(.unreachable), detail: "cannot connect: \(error)"))
                }
            }
    }

    func finish(_ answer: IdentAnswer) {
        guard !done else { return }
        done = true
        channel?.close(promise: nil)
        var answer = answer
        answer.durationMs = IdentClient.milliseconds(since: started)
        promise.succeed(answer)
    }

    /// A whole reply line arrived (or too many octets without one).
    func received(_ bytes: [UInt8]) {
        if let answer = IdentReply.answer(to: bytes, for: query) { finish(answer) }
    }

    func closedEarly(_ bytes: [UInt8]) {
        finish(IdentReply.closedEarly(after: bytes))
    }
}

private final class IdentReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let exchange: IdentExchange
    var received: [UInt8] = []

    init(exchange: IdentExchange) {
        self.exchange = exchange
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytesView
        exchange.received(received)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { exchange.closedEarly(received) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        exchange.closedEarly(received)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        exchange.finish(IdentAnswer(.failure(.unknownError), detail: "\(error)"))
    }
}
