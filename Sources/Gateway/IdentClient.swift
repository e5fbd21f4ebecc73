import AccessPolicy
import IdentProtocol
import Logging
import NIOCore
import NIOPosix
import NetAddress

/// What one ident lookup found, with everything the logs and the audit need.
public struct IdentLookupResult: Sendable, CustomStringConvertible {
    public var outcome: IdentOutcome
    /// The reply line as received, if one came.
    public var rawReply: String?
    public var opsys: String?
    /// Why there is no user-id, in words (refused, time-out, the parse failure, …).
    public var detail: String?
    public var duration: Duration

    public var description: String {
        var text = "\(outcome)"
        if let opsys { text += ", opsys \(opsys)" }
        if let detail { text += ": \(detail)" }
        return text
    }
}

/// An RFC 1413 client on SwiftNIO. It connects to port 113 of the SOCKS client's
/// address from the gateway address the client reached (an identd answers only about
/// connections between the two hosts of the query connection), sends
/// `<client port> , <gateway port>`, and reads one line under a deadline. It never
/// blocks an event loop.
public struct IdentClient: Sendable {
    let group: any EventLoopGroup
    let port: Int
    let logger: Logger

    /// `port` is 113 except in tests.
    public init(group: any EventLoopGroup, port: Int = 113, logger: Logger) {
        self.group = group
        self.port = port
        self.logger = logger
    }

    /// The engine's `IdentLookup`.
    public var lookup: IdentLookup {
        { facts, timeoutSeconds in
            let result = await self.query(
                client: facts.client, listener: facts.listener, timeout: .nanoseconds(Int64(timeoutSeconds * 1e9)))
            self.logger.info(
                "ident lookup",
                metadata: [
                    "client": "\(facts.client)", "outcome": "\(result.outcome)", "opsys": "\(result.opsys ?? "-")",
                    "reply": "\(result.rawReply ?? "-")", "detail": "\(result.detail ?? "-")", "duration": "\(result.duration)",
                ])
            return IdentAnswer(
                result.outcome, rawReply: result.rawReply, opsys: result.opsys, detail: result.detail,
                durationMs: Int(
                    result.duration.components.seconds * 1000 + result.duration.components.attoseconds / 1_000_000_000_000_000))
        }
    }

    /// Asks the identd at `client`'s address who owns `client` → `listener`.
    public func query(client: IPEndpoint, listener: IPEndpoint, timeout: TimeAmount) async -> IdentLookupResult {
        let eventLoop = group.any()
        let started = ContinuousClock.now
        let promise = eventLoop.makePromise(of: IdentLookupResult.self)
        let query = IdentQuery(serverPort: client.port, clientPort: listener.port)
        eventLoop.execute {
            IdentExchange(query: query, promise: promise, started: started).start(
                on: eventLoop, from: listener.address, to: IPEndpoint(address: client.address, port: UInt16(self.port)),
                timeout: timeout)
        }
        return (try? await promise.futureResult.get())
            ?? IdentLookupResult(
                outcome: .failure(.unknownError), detail: "lookup failed", duration: ContinuousClock.now - started)
    }
}

/// One query's life on one event loop: connect, send, read a line, or give up at the
/// deadline. Completes its promise exactly once.
private final class IdentExchange {
    let query: IdentQuery
    let promise: EventLoopPromise<IdentLookupResult>
    let started: ContinuousClock.Instant
    var done = false
    var connected = false
    var channel: (any Channel)?

    init(query: IdentQuery, promise: EventLoopPromise<IdentLookupResult>, started: ContinuousClock.Instant) {
        self.query = query
        self.promise = promise
        self.started = started
    }

    /// IP_BIND_ADDRESS_NO_PORT (Linux 4.2; <linux/in.h>, not in glibc's headers).
    private static let bindAddressNoPort = ChannelOptions.socket(SocketOptionLevel(IPPROTO_IP), 24)

    func start(on eventLoop: any EventLoop, from local: IPAddress, to identd: IPEndpoint, timeout: TimeAmount) {
        let deadline = eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            // Before the connect completed, identd was not reachable; after, it said nothing.
            self.finish(.failure(self.connected ? .timeout : .unreachable), detail: "no answer within \(timeout)")
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
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
                        self.finish(.failure(.unknownError), detail: "\(error)")
                        return
                    }
                    var line = channel.allocator.buffer(capacity: 16)
                    line.writeString(self.query.line)
                    channel.writeAndFlush(line, promise: nil)
                case .failure(let error):
                    self.finish(.failure(.unreachable), detail: "cannot connect: \(error)")
                }
            }
    }

    func finish(_ outcome: IdentOutcome, rawReply: String? = nil, opsys: String? = nil, detail: String? = nil) {
        guard !done else { return }
        done = true
        channel?.close(promise: nil)
        promise.succeed(
            IdentLookupResult(
                outcome: outcome, rawReply: rawReply, opsys: opsys, detail: detail, duration: ContinuousClock.now - started))
    }

    /// A whole reply line arrived (or too many octets without one).
    func received(_ bytes: [UInt8]) {
        switch IdentReply.firstLine(in: bytes) {
        case .needMoreBytes:
            return
        case .tooLong:
            finish(
                .failure(.malformed), rawReply: String(decoding: bytes.prefix(200), as: UTF8.self),
                detail: "over 1000 octets without a line end")
        case .line(let line):
            let raw = String(decoding: line, as: UTF8.self)
            switch IdentReply.parse(line, for: query) {
            case .failure(let failure):
                finish(.failure(.malformed), rawReply: raw, detail: failure.description)
            case .success(.userID(let user, let opsys, _)) where opsys.uppercased() == "OTHER":
                // RFC 1413: OTHER marks a token that is not a user name; it names nobody.
                finish(.failure(.other), rawReply: raw, opsys: opsys, detail: "OTHER opsys token \(user)")
            case .success(.userID(let user, let opsys, _)):
                finish(.userID(user), rawReply: raw, opsys: opsys)
            case .success(.error(let type)):
                let failure: IdentFailure =
                    switch type {
                    case "NO-USER": .noUser
                    case "HIDDEN-USER": .hidden
                    case "INVALID-PORT": .invalidPort
                    default: .unknownError
                    }
                finish(.failure(failure), rawReply: raw, detail: "ERROR \(type)")
            }
        }
    }

    func closedEarly(_ bytes: [UInt8]) {
        finish(
            .failure(.malformed), rawReply: bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self),
            detail: "closed without a line end")
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
        exchange.finish(.failure(.unknownError), detail: "\(error)")
    }
}
