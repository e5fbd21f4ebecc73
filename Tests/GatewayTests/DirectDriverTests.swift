import AccessPolicy
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

/// The direct connection driver (`--connection-driver direct`): what it carries itself,
/// what it hands to SwiftNIO, and its deadline heap (RelayTests relays through both drivers). The interop suite runs whole against
/// it too (IDENTGATE_CONNECTION_DRIVER=direct, in scripts/test).
@Suite struct DirectDriverTests {
    static func direct(_ configuration: inout GatewayConfiguration) { configuration.connectionDriver = .direct }

    final class Timed: Deadlined {
        var deadline: UInt64
        var heapIndex = -1
        init(_ deadline: UInt64) { self.deadline = deadline }
    }

    @Test func deadlinesComeOutInTimeOrderAndOnlyWhenDue() {
        var heap = DeadlineHeap<Timed>()
        let items = [50, 10, 40, 10, 30, 20].map { Timed(UInt64($0)) }
        for item in items { heap.schedule(item) }
        #expect(heap.next == 10)
        var order: [UInt64] = []
        while let item = heap.popDue(now: 35) { order.append(item.deadline) }
        #expect(order == [10, 10, 20, 30])
        #expect(heap.next == 40 && heap.count == 2)
        while heap.popDue(now: 100) != nil {}
        #expect(heap.next == nil && items.allSatisfy { $0.heapIndex == -1 })
    }

    /// A connection that closes takes its deadline with it (an idle time-out of an hour
    /// must not hold memory for a connection long gone), and a moved deadline is one entry.
    @Test func movedAndRemovedDeadlinesLeaveTheHeap() {
        var heap = DeadlineHeap<Timed>()
        var generator = SystemRandomNumberGenerator()
        let items = (0..<1000).map { _ in Timed(UInt64.random(in: 0..<1_000_000, using: &generator)) }
        for item in items { heap.schedule(item) }
        for item in items.prefix(500) {
            item.deadline = UInt64.random(in: 0..<1_000_000, using: &generator)
            heap.schedule(item)
        }
        #expect(heap.count == 1000)
        for item in items.suffix(300) { heap.remove(item) }
        #expect(heap.count == 700)
        var last: UInt64 = 0
        var popped = 0
        while let item = heap.popDue(now: .max) {
            #expect(item.deadline >= last)
            last = item.deadline
            popped += 1
        }
        #expect(popped == 700)
    }

    /// `--busy-poll`: a loop polls only after a turn that had events, so an idle one
    /// sleeps (its thread's CPU time stays far below the time it is idle), and one that
    /// polls still serves.
    @Test func aBusyPollingLoopSleepsWhenIdle() async throws {
        let loop = try DirectLoop(index: 0, busyPoll: 1_000_000)
        let thread = Thread { loop.run() }
        thread.start()
        let cpu = NIOLockedValueBox<[UInt64]>([])
        let readCPU: @Sendable () -> Void = {
            var time = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
            cpu.withLockedValue { $0.append(UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)) }
        }
        loop.execute(readCPU)
        try await Task.sleep(for: .milliseconds(400))
        loop.execute(readCPU)
        try await Task.sleep(for: .milliseconds(50))
        loop.execute { loop.stop() }
        let times = cpu.withLockedValue { $0 }
        #expect(times.count == 2)
        if times.count == 2 { #expect(times[1] - times[0] < 100_000_000, "idle for 400 ms, busy for \(times[1] - times[0]) ns") }

        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: {
            Self.direct(&$0)
            $0.busyPoll = .microseconds(50)
        })
        let client = try await RawClient.connect(to: gateway.address, sending: Self.connectHead("127.0.0.1:\(echo.port)") + [9])
        #expect(String(decoding: try await client.read(Self.established.utf8.count + 1), as: UTF8.self) == Self.established + "\u{9}")
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func theServerSaysWhichDriverCarriesIt() async throws {
        let gateway = try await TestGateway.start(configure: Self.direct)
        #expect(gateway.server.connectionDriver == .direct)
        try await gateway.stop()
        let proxied = try await TestGateway.start { configuration in
            Self.direct(&configuration)
            configuration.proxyProtocolFrom = [IPNetwork("10.0.0.0/8")!]
        }
        #expect(proxied.server.connectionDriver == .nio, "a PROXY header listener stays on SwiftNIO")
        try await proxied.stop()
    }

    /// A second listen address that cannot be bound: the start fails with the reason
    /// (`ListenError`), after shutting down what it had set up (GatewayServer.start).
    @Test func aFailedStartClosesWhatItOpened() async throws {
        // A port held without SO_REUSEPORT: the gateway cannot join it.
        let holder = try await ServerBootstrap(group: testGroup).bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(holder.localAddress?.port)
        await #expect(throws: ListenError.self) {
            _ = try await TestGateway.start { configuration in
                Self.direct(&configuration)
                configuration.listen = [IPEndpoint("127.0.0.1:0")!, IPEndpoint("127.0.0.1:\(port)")!]
            }
        }
        try await holder.close()
    }

    @Test func halfCloseFromTheClientStillDeliversTheResponse() async throws {
        let server = try await EchoServer(mode: .replyAfterEOF)
        let gateway = try await TestGateway.start(configure: Self.direct)
        let client = try await RawClient.connect(to: gateway.address)
        // Greeting, request and data in one segment, then EOF: `printf … | nc`.
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: server.port) + Array("question".utf8))
        try await client.shutdownOutput()
        let answer = try await client.readToEnd(timeout: .seconds(20))
        #expect(Array(answer.prefix(4)) == [5, 0, 5, 0])
        #expect(Array(answer.dropFirst(12)) == Array("question".utf8))
        try await gateway.stop()
        await server.stop()
    }

    static func connectHead(_ target: String, _ headers: String = "") -> [UInt8] {
        Array("CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n\(headers)\r\n".utf8)
    }

    static func pieces(of bytes: [UInt8], each size: Int) -> [[UInt8]] {
        stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
    }

    static let established = "HTTP/1.1 200 Connection established\r\n\r\n"

    /// An anonymous HTTP CONNECT to an address is carried by the direct loop itself (its
    /// head read by NIOHTTP1's decoder), with what the client sent after the head.
    @Test func anHTTPConnectToAnAddressIsCarriedHere() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: Self.direct)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.connectHead("127.0.0.1:\(echo.port)") + Array("early".utf8))
        let answer = try await client.read(Self.established.utf8.count + 5)
        #expect(String(decoding: answer, as: UTF8.self) == Self.established + "early")
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    /// What the loop does not carry goes to SwiftNIO's front door with every byte read,
    /// and is answered there: credentials, a head in pieces, a malformed head, a
    /// forwarded request.
    @Test func otherHTTPRequestsGoToTheFrontDoorWhole() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: Self.direct)
        let tunnels: [[[UInt8]]] = [
            [Self.connectHead("127.0.0.1:\(echo.port)", "Proxy-Authorization: Basic dTpw\r\n")],
            Self.pieces(of: Self.connectHead("127.0.0.1:\(echo.port)"), each: 9),
        ]
        for (index, pieces) in tunnels.enumerated() {
            let client = try await RawClient.connect(to: gateway.address)
            for piece in pieces {
                try await client.send(piece)
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(String(decoding: try await client.read(Self.established.utf8.count), as: UTF8.self) == Self.established)
            #expect(gateway.server.connectionsHandedToSwiftNIO == index + 1)
            await client.close()
        }
        let huge = "CONNECT 127.0.0.1:1 HTTP/1.1\r\n" + String(repeating: "X-Filler: \(String(repeating: "f", count: 990))\r\n", count: 90)
        for (refused, status) in [
            ("CONNECT 127.0.0.1:1 HTTP/1.1\r\nno colon here\r\n\r\n", 400), ("GET /relative HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            // Larger than a read here takes: answered at once by SwiftNIO's bound, not at the deadline.
            (huge, 431),
        ] {
            let client = try await RawClient.connect(to: gateway.address)
            try await client.send(Array(refused.utf8))
            let answer = String(decoding: try await client.readToEnd(timeout: .seconds(4)), as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 \(status) "), "\(answer.prefix(80))")
        }
        #expect(echo.peers.withLockedValue { $0.count } == 2)
        try await gateway.stop()
        await echo.stop()
    }

    /// A head that does not end in time gets the front door's 408 from the direct loop.
    @Test func anUnfinishedHeadTimesOutWith408() async throws {
        let gateway = try await TestGateway.start(configure: {
            Self.direct(&$0)
            $0.negotiationTimeout = .seconds(1)
        })
        let client = try await RawClient.connect(to: gateway.address, sending: Array("CONNECT 127.0.0.1:1 HTTP/1.1\r\n".utf8))
        let answer = String(decoding: try await client.readToEnd(timeout: .seconds(5)), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 408 "), "\(answer)")
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        try await gateway.stop()
    }

    /// A tunnel handed to SwiftNIO is waited for by a shutdown (and by a takeover's
    /// drain) as a direct relay is: it keeps relaying during the grace period, and the
    /// shutdown is over when it closes, in time.
    @Test func aShutdownWaitsForAHandedOverTunnel() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: Self.direct)
        let client = try await RawClient.connect(to: gateway.address)
        // Credentials: SwiftNIO's front door reads them.
        try await client.send(Self.connectHead("127.0.0.1:\(echo.port)", "Proxy-Authorization: Basic dTpw\r\n"))
        _ = try await client.read(Self.established.utf8.count)
        #expect(gateway.server.connectionsHandedToSwiftNIO == 1)
        let finished = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
        let stopping = Task {
            let inTime = try await gateway.server.shutdown(grace: .seconds(5))
            finished.withLockedValue { $0 = .now }
            return inTime
        }
        try await Task.sleep(for: .milliseconds(300))
        try await client.send([7])
        #expect(try await client.read(1) == [7], "the tunnel relays during the grace period")
        let closed = ContinuousClock.now
        await client.close()
        #expect(try await stopping.value, "the shutdown ended in time, when the tunnel closed")
        #expect(finished.withLockedValue { $0 }.map { $0 >= closed } == true, "the shutdown waited for the tunnel")
        try await gateway.threadPool.shutdownGracefully()
        await echo.stop()
    }

    /// A refusal is answered by the direct loop: SOCKS4's 91, and nothing connects.
    @Test func aRefusalIsAnsweredAndClosed() async throws {
        let echo = try await EchoServer()
        let compiled = try #require(PolicyCompiler.compile("deny from 0.0.0.0/0", file: "p").policy)
        let policy = PolicyEngine(policy: compiled)
        let gateway = try await TestGateway.start(configure: Self.direct, policy: policy)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(SOCKS.socks4Connect(port: echo.port))
        let reply = try await client.readToEnd(timeout: .seconds(5))
        #expect(reply.count == 8 && reply[1] == 91)
        #expect(echo.peers.withLockedValue { $0 }.isEmpty)
        try await gateway.stop()
        await echo.stop()
    }
}
