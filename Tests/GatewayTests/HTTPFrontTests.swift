import AccessPolicy
import Foundation
import NIOCore
import NetAddress
import Testing

@testable import Gateway

/// The HTTP front door on a real socket: CONNECT relayed under the policy, the proxy's own
/// answers for what it refuses to read, Basic authentication, and the first byte telling
/// the protocols apart.
@Suite struct HTTPFrontTests {
    static let credentials = try! CredentialStore(
        contents: "alice:\(try! PasswordHasher.hash(password: Array("right".utf8), method: .sha512))\n")

    func connect(_ port: UInt16, headers: String = "") -> [UInt8] {
        Array("CONNECT 127.0.0.1:\(port) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\(headers)\r\n".utf8)
    }

    /// Sends `request`, expects an answer starting with `statusLine`, then the close.
    func expectAnswer(
        _ request: [UInt8], _ statusLine: String, gateway: TestGateway, contains: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let client = try await RawClient.connect(to: gateway.address, sending: request)
        let answer = String(decoding: try await client.readToEnd(), as: UTF8.self)
        #expect(answer.hasPrefix(statusLine + "\r\n"), "\(answer)", sourceLocation: sourceLocation)
        if let contains { #expect(answer.contains(contains), "\(answer)", sourceLocation: sourceLocation) }
        await client.close()
    }

    @Test func connectIsRelayedWithTheBytesSentAfterIt() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start()
        defer { Task { try? await gateway.stop(); await echo.stop() } }
        // The head and the first bytes of the tunnel in one write, as a client sending its
        // TLS ClientHello early would.
        let client = try await RawClient.connect(to: gateway.address, sending: connect(echo.port) + Array("early".utf8))
        let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
        #expect(try await client.read(established.count) == established)
        #expect(try await client.read(5) == Array("early".utf8))
        try await client.send(Array("ping".utf8))
        #expect(try await client.read(4) == Array("ping".utf8))
        await client.close()
        // SOCKS still served on the same port.
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo)
    }

    @Test func refusedByThePolicyIs403() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(policy: PolicyEngine(policy: Policy(rules: [])))
        defer { Task { try? await gateway.stop(); await echo.stop() } }
        try await expectAnswer(connect(echo.port), "HTTP/1.1 403 Forbidden", gateway: gateway, contains: "Connection: close")
    }

    @Test func aDestinationThatRefusesIs502() async throws {
        let refusing = try RefusingPort()
        let gateway = try await TestGateway.start()
        defer { Task { try? await gateway.stop() } }
        try await expectAnswer(connect(refusing.port), "HTTP/1.1 502 Bad Gateway", gateway: gateway)
        withExtendedLifetime(refusing) {}
    }

    /// RFC 9112 §6's framing rules and the bounds on a head: answered by the proxy, closed,
    /// never passed on.
    @Test func unreadableRequestsAreAnsweredAndClosed() async throws {
        let gateway = try await TestGateway.start()
        defer { Task { try? await gateway.stop() } }
        let cases: [(String, String)] = [
            ("CONNECT 127.0.0.1:9 HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
            ("POST http://127.0.0.1:9/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", "400"),
            ("CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n", "400"),
            ("CONNECT 127.0.0.1:9 HTTP/1.1\r\nX: a\rb\r\n\r\n", "400"),
            ("CONNECT example.com HTTP/1.1\r\n\r\n", "400"),
            ("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
            ("GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n", "502"),
            ("GET http://127.0.0.1:9/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "501"),
            ("CONNECT " + String(repeating: "a", count: 9000) + ":443 HTTP/1.1\r\n\r\n", "414"),
            ("CONNECT 127.0.0.1:9 HTTP/1.1\r\n" + String(repeating: "X-A: b\r\n", count: 101) + "\r\n", "431"),
            ("CONNECT 127.0.0.1:9 HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 100_000) + "\r\n\r\n", "431"),
        ]
        for (request, status) in cases {
            let client = try await RawClient.connect(to: gateway.address, sending: Array(request.utf8))
            let answer = String(decoding: try await client.readToEnd(), as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 \(status) "), "\(request.prefix(60)): \(answer.prefix(60))")
            await client.close()
        }
    }

    @Test func aSlowHeadIsAnswered408AtTheDeadline() async throws {
        let gateway = try await TestGateway.start(configure: { $0.negotiationTimeout = .milliseconds(300) })
        defer { Task { try? await gateway.stop() } }
        let client = try await RawClient.connect(to: gateway.address, sending: Array("CONNECT 127.0.0.1:9 HTT".utf8))
        let answer = String(decoding: try await client.readToEnd(), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        await client.close()
    }

    @Test func basicAuthenticationWhenPasswordsAreRequired() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(
            configure: { $0.methods = [.usernamePassword] }, credentials: Self.credentials)
        defer { Task { try? await gateway.stop(); await echo.stop() } }
        let challenge = "Proxy-Authenticate: Basic realm=\"identgate\""
        try await expectAnswer(connect(echo.port), "HTTP/1.1 407 Proxy Authentication Required", gateway: gateway, contains: challenge)
        let wrong = "Proxy-Authorization: Basic " + Data("alice:wrong".utf8).base64EncodedString() + "\r\n"
        try await expectAnswer(
            connect(echo.port, headers: wrong), "HTTP/1.1 407 Proxy Authentication Required", gateway: gateway, contains: challenge)
        try await expectAnswer(connect(echo.port, headers: "Proxy-Authorization: Basic !!\r\n"), "HTTP/1.1 400 Bad Request", gateway: gateway)
        let right = "Proxy-Authorization: Basic " + Data("alice:right".utf8).base64EncodedString() + "\r\n"
        let client = try await RawClient.connect(to: gateway.address, sending: connect(echo.port, headers: right))
        let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
        #expect(try await client.read(established.count) == established)
        await client.close()
    }

    @Test func theFirstByteTellsTheProtocolsApart() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.stop() } }
        let socksOnly = try await TestGateway.start(configure: { $0.protocols = [.socks] })
        let refused = try await RawClient.connect(to: socksOnly.address, sending: connect(echo.port))
        #expect(try await refused.readToEnd() == [], "no HTTP on a SOCKS-only listener")
        try await expectNormalRequestSucceeds(gateway: socksOnly, echo: echo)
        try await socksOnly.stop()

        let httpOnly = try await TestGateway.start(configure: { $0.protocols = [.http] })
        let socks = try await RawClient.connect(to: httpOnly.address, sending: [5, 1, 0])
        #expect(try await socks.readToEnd() == [], "no SOCKS on an HTTP-only listener")
        let client = try await RawClient.connect(to: httpOnly.address, sending: connect(echo.port))
        #expect(try await client.read(12) == Array("HTTP/1.1 200".utf8))
        await client.close()
        try await httpOnly.stop()
    }
}
