import AccessPolicy
import NIOCore
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

@Suite struct RelayTests {
    func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Through either connection driver (`--connection-driver`): the same bytes out.
    @Test(arguments: ConnectionDriver.allCases)
    func oneMebibyteBothWaysThroughSOCKS4And5(driver: ConnectionDriver) async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start { $0.connectionDriver = driver }
        let payload = randomBytes(1 << 20)
        for request in [[5, 1, 0] + SOCKS.socks5Connect(port: echo.port), SOCKS.socks4Connect(port: echo.port, user: "u")] {
            let client = try await RawClient.connect(to: gateway.address)
            try await client.send(request)
            let reply = try await client.read(request[0] == 5 ? 12 : 8)
            #expect(reply[request[0] == 5 ? 3 : 1] == (request[0] == 5 ? 0 : 90), "granted")
            try await client.send(payload)
            try await client.shutdownOutput()
            #expect(try await client.readToEnd(timeout: .seconds(20)) == payload)
        }
        try await gateway.stop()
        await echo.stop()
    }

    /// The client shuts down its sending side first; the destination answers only after
    /// that EOF. The whole answer must still arrive, then the end.
    @Test func halfCloseFromTheClientStillDeliversTheResponse() async throws {
        let server = try await EchoServer(mode: .replyAfterEOF)
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: server.port))
        #expect(Array(try await client.read(12).prefix(4)) == [5, 0, 5, 0])
        let request = randomBytes(300_000)
        try await client.send(request)
        try await client.shutdownOutput()
        #expect(try await client.readToEnd(timeout: .seconds(20)) == request)
        try await gateway.stop()
        await server.stop()
    }

    @Test func replyCarriesTheOutboundLocalAddress() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        let reply = try await client.read(12)
        let bound = IPEndpoint(address: .v4(IPv4Address(octets: reply[6..<10])), port: UInt16(reply[10]) << 8 | UInt16(reply[11]))
        try await client.send([1])
        _ = try await client.read(1)
        #expect(echo.peers.withLockedValue { $0 } == [bound])
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func dataSentWithTheRequestIsRelayedFirst() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(SOCKS.socks4Connect(port: echo.port) + Array("early".utf8))
        #expect(try await client.read(8).prefix(2) == [0, 90])
        #expect(try await client.read(5) == Array("early".utf8))
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    /// More early data than the gateway keeps while it connects (`EarlyClientData.limit`): it
    /// stops reading at the limit and the rest follows through the relay, in order.
    @Test func earlyDataBeyondTheLimitArrivesWholeAndInOrder() async throws {
        /// Takes its time, so that the client's data piles up while the request waits.
        struct SlowPolicy: PolicyDecider {
            func decide(_ facts: RequestFacts) async -> Decision {
                try? await Task.sleep(for: .milliseconds(300))
                return await PolicyEngine(policy: DefaultPolicy.policy).decide(facts)
            }
        }
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(policy: SlowPolicy())
        let client = try await RawClient.connect(to: gateway.address)
        let early = (0..<(3 * EarlyClientData.limit + 17)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        try await client.send(SOCKS.socks4Connect(port: echo.port) + early)
        #expect(try await client.read(8).prefix(2) == [0, 90])
        #expect(try await client.read(early.count, timeout: .seconds(10)) == early)
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func ipv6DestinationAndListener() async throws {
        let echo = try await EchoServer(host: "::1")
        let gateway = try await TestGateway.start(configure: { $0.listen = [IPEndpoint("[::1]:0")!] })
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(
            [5, 1, 0] + SOCKS.socks5Connect(port: echo.port, host: [4] + [UInt8](repeating: 0, count: 15) + [1]))
        let reply = try await client.read(24)
        #expect(Array(reply.prefix(4)) == [5, 0, 5, 0])
        #expect(reply[5] == 4, "an IPv6 bound address")
        try await client.send([7, 7])
        #expect(try await client.read(2) == [7, 7])
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func idleRelayIsClosed() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: { $0.idleTimeout = .milliseconds(300) })
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        _ = try await client.read(12)
        #expect(try await client.readToEnd(timeout: .seconds(3)) == [])
        try await gateway.stop()
        await echo.stop()
    }

    /// Shutdown stops accepting at once, but a running relay goes on until it ends.
    @Test func shutdownLetsRunningSessionsFinish() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        _ = try await client.read(12)

        async let finished = gateway.server.shutdown(grace: .seconds(10))
        try await Task.sleep(for: .milliseconds(200))
        await #expect(throws: (any Error).self) { try await RawClient.connect(to: gateway.address) }
        try await client.send(Array("still here".utf8))
        #expect(try await client.read(10) == Array("still here".utf8))
        await client.close()
        #expect(try await finished == true)
        try await gateway.threadPool.shutdownGracefully()
        await echo.stop()
    }
}

@Suite struct CredentialStoreTests {
    @Test func verifiesYescryptAndSHA512() throws {
        let yescrypt = try PasswordHasher.hash(password: Array("pw1".utf8), method: .yescrypt)
        let sha512 = try PasswordHasher.hash(password: Array("pw2".utf8), method: .sha512)
        #expect(yescrypt.hasPrefix("$y$"))
        #expect(sha512.hasPrefix("$6$"))
        let store = try CredentialStore(
            contents: "# users\nann:\(yescrypt)\n\nbob:\(sha512):19000:0:99999:7:::\nlocked:!\(sha512)\n")
        #expect(store.userCount == 3)
        #expect(store.verify(user: "ann", password: Array("pw1".utf8)))
        #expect(!store.verify(user: "ann", password: Array("pw2".utf8)))
        #expect(store.verify(user: "bob", password: Array("pw2".utf8)))
        #expect(!store.verify(user: "locked", password: Array("pw2".utf8)))
        #expect(!store.verify(user: "nobody", password: Array("pw1".utf8)))
        #expect(!store.verify(user: "ann", password: Array("pw1".utf8) + [0]))
    }

    @Test func reportsEveryBadLineWithItsNumber() {
        #expect {
            try CredentialStore(contents: "ok:$6$x$y\nno-colon\nplain:secret\nok:$6$a$b\n", fileName: "users")
        } throws: { error in
            let text = "\(error)"
            return text.contains("users:2: error") && text.contains("users:3: error") && text.contains("users:4: error")
                && text.contains("listed twice")
        }
    }
}

@Suite struct EarlyHalfCloseTests {
    /// `printf 'request+data' | nc`: the client's EOF arrives before the relay starts
    /// and must still reach the destination, after the data.
    @Test func eofSentWithTheRequestReachesTheDestination() async throws {
        let server = try await EchoServer(mode: .replyAfterEOF)
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(SOCKS.socks4Connect(port: server.port) + Array("whole question".utf8))
        try await client.shutdownOutput()
        #expect(try await client.read(8).prefix(2) == [0, 90])
        #expect(try await client.readToEnd() == Array("whole question".utf8))
        try await gateway.stop()
        await server.stop()
    }

    @Test func eofBeforeTheRequestIsCompleteCloses() async throws {
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1])
        try await client.shutdownOutput()
        #expect(try await client.readToEnd(timeout: .seconds(2)) == [])
        try await gateway.stop()
    }
}
