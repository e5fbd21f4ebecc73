import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import NetAddress
import SOCKSWire
import Testing

@testable import Gateway

/// Orderings that real sockets cannot provoke on demand, driven on NIO's testing channel
/// with its virtual clock: results that arrive after the client left or after a deadline
/// fired must end only that session, quietly.
@Suite struct SessionOrderingTests {
    /// A decider whose async answers the test releases, one by one.
    final class HeldDecider: PolicyDecider {
        let answer: Decision
        let waiting = NIOLockedValueBox<[CheckedContinuation<Void, Never>]>([])
        let asked = NIOLockedValueBox(0)

        init(answer: Decision) { self.answer = answer }

        func decide(_ facts: RequestFacts) async -> Decision {
            asked.withLockedValue { $0 += 1 }
            await withCheckedContinuation { continuation in waiting.withLockedValue { $0.append(continuation) } }
            return answer
        }

        /// Waits until a decision is pending, then lets it finish.
        func releaseOne() async throws {
            for _ in 0..<500 {
                if let next = waiting.withLockedValue({ $0.isEmpty ? nil : $0.removeFirst() }) {
                    next.resume()
                    return
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            throw TimedOut()
        }
    }

    /// A password check that blocks until the test releases it.
    final class HeldVerifier: PasswordVerifier {
        let gate = NIOLockedValueBox<Bool?>(nil)
        let started = NIOLockedValueBox(false)
        func check(user: String, password: [UInt8]) -> PasswordCheck {
            started.withLockedValue { $0 = true }
            while true {
                if let result = gate.withLockedValue({ $0 }) { return result ? .accepted(.file) : .refused(nil) }
                usleep(1000)
            }
        }
    }

    static let allowAll = Decision(.allow(route: nil), rule: RuleReference(line: 1), trace: [])

    /// One pool for the suite (a pool per test would outlive it: LeakSanitizer says so).
    static let sharedPool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        return pool
    }()

    func gateway(
        policy: any PolicyDecider, credentials: (any PasswordVerifier)? = nil, threadPool: NIOThreadPool = Self.sharedPool
    ) -> GatewayContext {
        var configuration = GatewayConfiguration()
        configuration.negotiationTimeout = .seconds(5)
        var logger = Logger(label: "ordering-test")
        logger.logLevel = .critical
        return GatewayContext(
            configuration: configuration, policy: policy, credentials: credentials,
            resolver: HostResolver(threadPool: threadPool, timeout: .seconds(5)), threadPool: threadPool, logger: logger,
            audit: nil)
    }

    func client(_ gateway: GatewayContext) async throws -> NIOAsyncTestingChannel {
        try await negotiatingClient(gateway)
    }

    func send(_ bytes: [UInt8], to channel: NIOAsyncTestingChannel) async throws {
        try await channel.writeInbound(ByteBuffer(bytes: bytes))
    }

    func written(_ channel: NIOAsyncTestingChannel) async throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try await channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
        return bytes
    }

    /// SOCKS5 CONNECT to 192.0.2.1:80, no authentication.
    let connectRequest: [UInt8] = [5, 1, 0] + [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]

    @Test func credentialResultAfterTheDeadlineClosedTheConnection() async throws {
        let verifier = HeldVerifier()
        let channel = try await client(gateway(policy: HeldDecider(answer: Self.allowAll), credentials: verifier))
        try await send([5, 1, 2] + [1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "p")], to: channel)
        for _ in 0..<500 where !verifier.started.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(2)) }
        #expect(verifier.started.withLockedValue { $0 })
        await channel.testingEventLoop.advanceTime(by: .seconds(6))
        #expect(!channel.isActive, "the negotiation deadline closed the connection")
        verifier.gate.withLockedValue { $0 = true }
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [5, 2], "only the method selection; no reply after the close")
    }

    @Test func credentialResultAfterTheClientLeft() async throws {
        let verifier = HeldVerifier()
        let channel = try await client(gateway(policy: HeldDecider(answer: Self.allowAll), credentials: verifier))
        try await send([5, 1, 2] + [1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "p")], to: channel)
        for _ in 0..<500 where !verifier.started.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(2)) }
        try await channel.close()
        verifier.gate.withLockedValue { $0 = false }
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [5, 2])
    }

    @Test func decisionDeadlineRefusesWithAGeneralFailure() async throws {
        let decider = HeldDecider(answer: Self.allowAll)
        let channel = try await client(gateway(policy: decider))
        try await send(connectRequest, to: channel)
        #expect(try await written(channel) == [5, 0])
        await channel.testingEventLoop.advanceTime(by: .seconds(6))
        #expect(try await written(channel) == [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], "general failure at the deadline")
        #expect(!channel.isActive)
        // The decision that comes after its deadline changes nothing (no connect, no reply).
        try await decider.releaseOne()
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [])
    }

    @Test func decisionAfterTheClientLeft() async throws {
        let decider = HeldDecider(answer: Self.allowAll)
        let channel = try await client(gateway(policy: decider))
        try await send(connectRequest + Array("early".utf8), to: channel)
        try await channel.close()
        // An allowed decision for a session that has ended starts no connect (on this
        // testing loop a connect could not even be made) and writes nothing.
        try await decider.releaseOne()
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [5, 0])
        #expect(decider.asked.withLockedValue { $0 } == 1)
    }

    @Test func refusalAfterEarlyDataAndEOF() async throws {
        let decider = HeldDecider(answer: Decision(.deny(.notAllowed), rule: nil, trace: []))
        let channel = try await client(gateway(policy: decider))
        try await send(connectRequest + Array("GET / HTTP/1.0\r\n\r\n".utf8), to: channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(channel.isActive, "EOF after a complete request: the request goes on")
        try await decider.releaseOne()
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [5, 0] + [5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    /// The request, then EOF with nothing after it: the client has gone, and its
    /// decision, when it comes, starts nothing.
    @Test func eofWithoutDataWhileDecidingEndsTheSession() async throws {
        let decider = HeldDecider(answer: Self.allowAll)
        let channel = try await client(gateway(policy: decider))
        try await send(connectRequest, to: channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        await channel.testingEventLoop.run()
        #expect(!channel.isActive)
        try await decider.releaseOne()
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [5, 0], "no reply to a client that left")
    }

    @Test func resolutionAfterTheClientLeft() async throws {
        let decider = HeldDecider(answer: Self.allowAll)
        let threadPool = NIOThreadPool(numberOfThreads: 1)
        threadPool.start()
        defer { threadPool.shutdownGracefully { _ in } }
        let channel = try await client(gateway(policy: decider, threadPool: threadPool))
        // The pool's one thread is held, so the lookup waits until the client has gone.
        let held = NIOLockedValueBox(true)
        threadPool.submit { _ in
            while held.withLockedValue({ $0 }) { usleep(1000) }
        }
        try await send([5, 1, 0] + [5, 1, 0, 3, 12] + Array("host.invalid".utf8) + [0, 80], to: channel)
        try await channel.close()
        held.withLockedValue { $0 = false }
        try await Task.sleep(for: .milliseconds(200))
        await channel.testingEventLoop.run()
        #expect(decider.asked.withLockedValue { $0 } == 0, "a resolution for a departed client is not decided")
        #expect(try await written(channel) == [5, 0])
    }

    @Test func bindDecisionAfterTheClientLeft() async throws {
        let decider = HeldDecider(answer: Self.allowAll)
        let channel = try await client(gateway(policy: decider))
        try await send([4, 2, 0, 21, 192, 0, 2, 1, 0], to: channel)
        try await channel.close()
        try await decider.releaseOne()
        try await Task.sleep(for: .milliseconds(50))
        await channel.testingEventLoop.run()
        #expect(try await written(channel) == [], "no listener, no reply")
    }

    @Test func incompleteRequestThenEOFCloses() async throws {
        let channel = try await client(gateway(policy: HeldDecider(answer: Self.allowAll)))
        try await send([5, 1, 0, 5, 1], to: channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        await channel.testingEventLoop.run()
        #expect(!channel.isActive)
    }
}

/// A client connection on NIO's testing channel with the negotiation handler in place:
/// the gateway's session path with a virtual clock and no sockets.
func negotiatingClient(_ gateway: GatewayContext) async throws -> NIOAsyncTestingChannel {
    let channel = NIOAsyncTestingChannel()
    channel.localAddress = try SocketAddress(ipAddress: "127.0.0.1", port: 1080)
    channel.remoteAddress = try SocketAddress(ipAddress: "127.0.0.1", port: 40000)
    try await channel.testingEventLoop.executeInContext {
        try channel.pipeline.syncOperations.addHandler(NegotiationHandler(gateway: gateway))
    }
    try await channel.connect(to: channel.remoteAddress!).get()
    return channel
}
