import AccessPolicy
import NIOCore
import NIOPosix
import NetAddress
import SOCKSWire
import Testing

@testable import Gateway

/// Every bad input the gateway must survive: the exact reply bytes (or none), then the
/// close, then a normal request on the same gateway that succeeds.
@Suite struct BadInputTests {
    static let credentials = try! CredentialStore(
        contents: "alice:\(try! PasswordHasher.hash(password: Array("right".utf8), method: .sha512))\n")

    /// Sends `input`, expects exactly `reply` and then the end of the connection.
    func expectRefusal(
        _ input: [UInt8], reply: [UInt8], methods: [UInt8] = [], credentials: CredentialStore? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(
            configure: { $0.methods = credentials == nil ? [.noAuthentication] : [.usernamePassword, .noAuthentication] },
            credentials: credentials)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(input)
        #expect(try await client.readToEnd() == reply, sourceLocation: sourceLocation)
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo, sourceLocation: sourceLocation)
        try await gateway.stop()
        await echo.stop()
    }

    @Test func unknownVersionByteIsClosedWithoutReply() async throws {
        try await expectRefusal([0x06, 0x45, 0x54, 0x20], reply: [])
        try await expectRefusal([0x67, 0x65, 0x74, 0x20], reply: [], sourceLocation: #_sourceLocation)
    }

    @Test func socks4UserIDOverTheCapWithoutNUL() async throws {
        try await expectRefusal(
            [4, 1, 0, 80, 127, 0, 0, 1] + [UInt8](repeating: 0x41, count: 300), reply: [0, 91, 0, 0, 0, 0, 0, 0])
    }

    @Test func socks4aHostNameOverTheCapWithoutNUL() async throws {
        try await expectRefusal(
            [4, 1, 0, 80, 0, 0, 0, 1, 0] + [UInt8](repeating: 0x61, count: 300), reply: [0, 91, 0, 0, 0, 0, 0, 0])
    }

    @Test func socks5GreetingWithZeroMethods() async throws {
        try await expectRefusal([5, 0], reply: [5, 0xff])
    }

    @Test func socks5NoAcceptableMethod() async throws {
        try await expectRefusal([5, 1, 0x01], reply: [5, 0xff])
    }

    @Test func socks5UnknownAddressType() async throws {
        try await expectRefusal([5, 1, 0, 5, 1, 0, 8, 1, 2], reply: [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    @Test func socks5UnknownCommand() async throws {
        try await expectRefusal([5, 1, 0, 5, 7, 0, 1, 127, 0, 0, 1, 0, 80], reply: [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    @Test func socks5ReservedNotZero() async throws {
        try await expectRefusal([5, 1, 0, 5, 1, 1, 1, 127, 0, 0, 1, 0, 80], reply: [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    @Test func rfc1929WrongVersion() async throws {
        try await expectRefusal(
            [5, 1, 2, 5, 5] + Array("alice".utf8) + [5] + Array("right".utf8), reply: [5, 2, 1, 1], credentials: Self.credentials)
    }

    @Test func rfc1929WrongPassword() async throws {
        try await expectRefusal(
            [5, 1, 2, 1, 5] + Array("alice".utf8) + [5] + Array("wrong".utf8), reply: [5, 2, 1, 1], credentials: Self.credentials)
    }

    @Test func rfc1929UnknownUser() async throws {
        try await expectRefusal(
            [5, 1, 2, 1, 3] + Array("eve".utf8) + [5] + Array("right".utf8), reply: [5, 2, 1, 1], credentials: Self.credentials)
    }

    @Test func rfc1929RightPasswordConnects() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(credentials: Self.credentials)
        let client = try await RawClient.connect(to: gateway.address)
        // Greeting, credentials and request in one segment: each waits for the last.
        try await client.send(
            [5, 1, 2, 1, 5] + Array("alice".utf8) + [5] + Array("right".utf8) + SOCKS.socks5Connect(port: echo.port))
        #expect(try await client.read(4) == [5, 2, 1, 0])
        #expect(Array(try await client.read(10).prefix(2)) == [5, 0])
        try await client.send([42])
        #expect(try await client.read(1) == [42])
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func truncatedRequestThenSilenceTimesOut() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: { $0.negotiationTimeout = .seconds(1) })
        let socks4 = try await RawClient.connect(to: gateway.address, sending: [4, 1, 0])
        let socks5 = try await RawClient.connect(to: gateway.address, sending: [5, 1])
        let started = ContinuousClock.now
        #expect(try await socks4.readToEnd() == [0, 91, 0, 0, 0, 0, 0, 0])
        #expect(try await socks5.readToEnd() == [], "a half greeting has no reply")
        #expect(ContinuousClock.now - started < .seconds(4))
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo)
        try await gateway.stop()
        await echo.stop()
    }
}

@Suite struct ConnectFailureTests {
    /// A port nothing listens on: bind one, note it, close it.
    func closedPort() async throws -> UInt16 {
        let server = try await EchoServer()
        let port = server.port
        await server.stop()
        return port
    }

    @Test func refusedIsReply5ForSOCKS5And91ForSOCKS4() async throws {
        let port = try await closedPort()
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start()
        let socks5 = try await RawClient.connect(to: gateway.address)
        try await socks5.send([5, 1, 0] + SOCKS.socks5Connect(port: port))
        #expect(try await socks5.readToEnd() == [5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0])
        let socks4 = try await RawClient.connect(to: gateway.address)
        try await socks4.send(SOCKS.socks4Connect(port: port))
        #expect(try await socks4.readToEnd() == [0, 91, 0, 0, 0, 0, 0, 0])
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo)
        try await gateway.stop()
        await echo.stop()
    }

    /// A listener whose accept queue is full drops new SYNs, so a connect to it hangs
    /// until the gateway's connect time-out.
    @Test func timeoutIsReply6() async throws {
        let full = try await ServerBootstrap(group: testGroup)
            .serverChannelOption(.backlog, value: 0)
            .serverChannelOption(.autoRead, value: false)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = UInt16(full.localAddress!.port!)
        var fillers: [any Channel] = []
        for _ in 0..<4 {
            if let channel = try? await ClientBootstrap(group: testGroup).connectTimeout(.milliseconds(200))
                .connect(host: "127.0.0.1", port: Int(port)).get()
            {
                fillers.append(channel)
            }
        }
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: { $0.connectTimeout = .milliseconds(500) })
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: port))
        #expect(try await client.readToEnd() == [5, 0, 5, 6, 0, 1, 0, 0, 0, 0, 0, 0])
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo)
        for channel in fillers { try? await channel.close() }
        try? await full.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func unresolvableNameIsHostUnreachable() async throws {
        let gateway = try await TestGateway.start(configure: { $0.connectTimeout = .seconds(3) })
        let client = try await RawClient.connect(to: gateway.address)
        let name = Array("no-such-host.invalid".utf8)
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: 80, host: [3, UInt8(name.count)] + name))
        #expect(try await client.readToEnd(timeout: .seconds(10)) == [5, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0])
        try await gateway.stop()
    }

    @Test func deniedByPolicyIsReply2And91() async throws {
        let gateway = try await TestGateway.start(policy: PolicyEngine(policy: Policy(rules: [])))
        let socks5 = try await RawClient.connect(to: gateway.address)
        try await socks5.send([5, 1, 0] + SOCKS.socks5Connect(port: 9))
        #expect(try await socks5.readToEnd() == [5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
        let socks4 = try await RawClient.connect(to: gateway.address)
        try await socks4.send(SOCKS.socks4Connect(port: 9, user: "x"))
        #expect(try await socks4.readToEnd() == [0, 91, 0, 0, 0, 0, 0, 0])
        try await gateway.stop()
    }

    @Test(arguments: [
        (ECONNREFUSED, SOCKSRequestFailure.connectionRefused),
        (ENETUNREACH, .networkUnreachable), (ENETDOWN, .networkUnreachable),
        (EHOSTUNREACH, .hostUnreachable), (EHOSTDOWN, .hostUnreachable),
        (ETIMEDOUT, .timedOut), (EACCES, .generalFailure),
    ])
    func errnoTable(errno: Int32, expected: SOCKSRequestFailure) {
        #expect(SOCKSRequestFailure(errno: errno) == expected)
    }
}
