import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import Gateway

/// One event loop group for every test in the process, like a real server would have.
let testGroup = MultiThreadedEventLoopGroup.singleton

struct TimedOut: Error {}

/// A gateway on 127.0.0.1 with an ephemeral port, stopped by `stop()`.
struct TestGateway {
    let server: GatewayServer
    let threadPool: NIOThreadPool
    let address: SocketAddress

    static func start(
        configure: (inout GatewayConfiguration) -> Void = { _ in },
        policy: any PolicyDecider = PolicyEngine(policy: DefaultPolicy.policy),
        credentials: CredentialStore? = nil,
        audit: AuditWriter? = nil,
        lookup: @escaping HostResolver.Lookup = HostResolver.getaddrinfo
    ) async throws -> TestGateway {
        var configuration = GatewayConfiguration()
        configuration.listen = [IPEndpoint("127.0.0.1:0")!]
        configuration.negotiationTimeout = .seconds(5)
        configuration.connectTimeout = .seconds(5)
        configure(&configuration)
        let threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        var logger = Logger(label: "test-gateway")
        logger.logLevel = .critical
        let server = GatewayServer(
            configuration: configuration, policy: policy, credentials: credentials,
            group: testGroup, threadPool: threadPool, logger: logger, audit: audit, lookup: lookup
        )
        let bound = try await server.start()
        return TestGateway(
            server: server, threadPool: threadPool,
            address: try SocketAddress(ipAddress: "\(bound[0].address)", port: Int(bound[0].port)))
    }

    func stop() async throws {
        try await server.shutdown(grace: .seconds(1))
        try await threadPool.shutdownGracefully()
    }
}

/// A TCP client that collects whatever arrives, for byte-exact assertions.
final class RawClient: Sendable {
    private struct State {
        var received: [UInt8] = []
        var ended = false
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let state: NIOLockedValueBox<State>
        let greeting: [UInt8]
        init(state: NIOLockedValueBox<State>, greeting: [UInt8]) {
            self.state = state
            self.greeting = greeting
        }

        func channelActive(context: ChannelHandlerContext) {
            if !greeting.isEmpty { context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: greeting)), promise: nil) }
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(unwrapInboundIn(data).readableBytesView)
            state.withLockedValue { $0.received += bytes }
        }
        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { $0.ended = true }
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { state.withLockedValue { $0.ended = true } }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    let channel: any Channel
    private let state: NIOLockedValueBox<State>

    private init(channel: any Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    /// `sending`: bytes written the moment the connection is up, on the event loop, so
    /// that no test scheduling delay comes between the connect and them.
    static func connect(to address: SocketAddress, sending greeting: [UInt8] = []) async throws -> RawClient {
        let state = NIOLockedValueBox(State())
        let channel = try await ClientBootstrap(group: testGroup)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(state: state, greeting: greeting))
                }
            }
            .connect(to: address).get()
        return RawClient(channel: channel, state: state)
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func shutdownOutput() async throws {
        try await channel.close(mode: .output)
    }

    func close() async {
        try? await channel.close()
    }

    /// Exactly `count` bytes, consumed; throws if the connection ends first or time runs out.
    func read(_ count: Int, timeout: Duration = .seconds(5)) async throws -> [UInt8] {
        try await poll(timeout: timeout) { state in
            if state.received.count >= count {
                defer { state.received.removeFirst(count) }
                return Array(state.received.prefix(count))
            }
            if state.ended { throw TimedOut() }
            return nil
        }
    }

    /// Everything until the peer ends the connection.
    func readToEnd(timeout: Duration = .seconds(5)) async throws -> [UInt8] {
        try await poll(timeout: timeout) { state in
            guard state.ended else { return nil }
            defer { state.received = [] }
            return state.received
        }
    }

    private func poll<T: Sendable>(timeout: Duration, _ check: @Sendable (inout State) throws -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            // Checked once more after the deadline: a test task starved past it (the
            // suites run in parallel on two cores) must not miss bytes that arrived in time.
            let expired = ContinuousClock.now >= deadline
            if let value = try state.withLockedValue(check) { return value }
            if expired { throw TimedOut() }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// A TCP server on 127.0.0.1 that echoes, or answers only after the client's EOF, and
/// records the address each connection came from.
final class EchoServer: Sendable {
    enum Mode: Sendable {
        /// Echo as it arrives; on EOF, shut down output after the echo.
        case echo
        /// Collect until EOF, then send it all back and close: only a correct half-close
        /// lets the client see any of it.
        case replyAfterEOF
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let mode: Mode
        var collected: ByteBuffer?
        init(mode: Mode) { self.mode = mode }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            switch mode {
            case .echo:
                context.write(data, promise: nil)
            case .replyAfterEOF:
                if collected == nil { collected = bytes } else { collected!.writeBuffer(&bytes) }
            }
        }
        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case ChannelEvent.inputClosed = event else { return }
            let reply = collected ?? context.channel.allocator.buffer(capacity: 0)
            context.writeAndFlush(wrapOutboundOut(reply)).assumeIsolated().whenComplete { _ in
                switch self.mode {
                case .echo: context.close(mode: .output, promise: nil)
                case .replyAfterEOF: context.close(promise: nil)
                }
            }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    let channel: any Channel
    let peers: NIOLockedValueBox<[IPEndpoint]>

    var port: UInt16 { UInt16(channel.localAddress!.port!) }

    init(mode: Mode = .echo, host: String = "127.0.0.1") async throws {
        let peers = NIOLockedValueBox<[IPEndpoint]>([])
        self.peers = peers
        self.channel = try await ServerBootstrap(group: testGroup)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                if let remote = channel.remoteAddress?.ipEndpoint { peers.withLockedValue { $0.append(remote) } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(mode: mode))
                }
            }
            .bind(host: host, port: 0).get()
    }

    func stop() async {
        try? await channel.close()
    }
}

/// A loopback port where a connect is refused, held for the test's length: a socket bound
/// but not listening (a stopped server's port could be taken by a test running beside).
final class RefusingPort {
    private let descriptor: Int32
    let port: UInt16

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(descriptor, raw, length) == 0 && getsockname(descriptor, raw, &length) == 0
            }
        }
        guard descriptor >= 0, bound else { throw TimedOut() }
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit {
        close(descriptor)
    }
}

/// SOCKS request bytes for tests.
enum SOCKS {
    static func port(_ port: UInt16) -> [UInt8] { [UInt8(port >> 8), UInt8(port & 0xff)] }

    static func socks5Connect(port: UInt16, host: [UInt8] = [1, 127, 0, 0, 1]) -> [UInt8] {
        [5, 1, 0] + host + Self.port(port)
    }

    static func socks4Connect(port: UInt16, user: String = "") -> [UInt8] {
        [4, 1] + Self.port(port) + [127, 0, 0, 1] + Array(user.utf8) + [0]
    }
}

/// A SOCKS5 CONNECT through the gateway to the echo server and back: proves the gateway
/// still serves after whatever a test did to it before.
func expectNormalRequestSucceeds(gateway: TestGateway, echo: EchoServer, sourceLocation: SourceLocation = #_sourceLocation)
    async throws
{
    let client = try await RawClient.connect(to: gateway.address)
    defer { Task { await client.close() } }
    try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
    #expect(try await client.read(2) == [5, 0], sourceLocation: sourceLocation)
    let reply = try await client.read(10)
    #expect(Array(reply.prefix(4)) == [5, 0, 0, 1], sourceLocation: sourceLocation)
    try await client.send(Array("ping".utf8))
    #expect(try await client.read(4) == Array("ping".utf8), sourceLocation: sourceLocation)
}
