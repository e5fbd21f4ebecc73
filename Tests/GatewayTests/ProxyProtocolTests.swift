import AccessPolicy
import NIOConcurrencyHelpers
import NIOCore
import NetAddress
import ProxyProtocol
import Testing

@testable import Gateway

/// The gateway behind a load balancer: from a `--proxy-protocol-from` peer a PROXY
/// header is required, may arrive in pieces or with the SOCKS bytes in one write, and
/// the policy sees the client it names; anything else from that peer is closed unanswered.
@Suite struct ProxyProtocolTests {
    /// The default policy, remembering the facts of every request.
    final class RecordingPolicy: PolicyDecider {
        let engine = PolicyEngine(policy: DefaultPolicy.policy)
        let seen = NIOLockedValueBox<[RequestFacts]>([])

        func decide(_ facts: RequestFacts) async -> Decision {
            seen.withLockedValue { $0.append(facts) }
            return await engine.decide(facts, identLookup: nil)
        }
    }

    func gateway(_ policy: RecordingPolicy) async throws -> TestGateway {
        try await TestGateway.start(configure: { $0.proxyProtocolFrom = [IPNetwork("127.0.0.0/8")!] }, policy: policy)
    }

    static let header = Array("PROXY TCP4 127.9.8.7 127.0.0.1 40000 1080\r\n".utf8)

    @Test func aHeaderInPiecesThenSOCKS() async throws {
        let echo = try await EchoServer()
        let policy = RecordingPolicy()
        let gateway = try await gateway(policy)
        let client = try await RawClient.connect(to: gateway.address)
        for byte in Self.header {
            try await client.send([byte])
        }
        try await client.send([5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        #expect(try await client.read(2) == [5, 0])
        #expect(Array(try await client.read(10).prefix(2)) == [5, 0])
        try await client.send(Array("ping".utf8))
        #expect(try await client.read(4) == Array("ping".utf8))
        let facts = try #require(policy.seen.withLockedValue { $0.first })
        #expect(facts.client == IPEndpoint("127.9.8.7:40000"))
        #expect(facts.listener == IPEndpoint("127.0.0.1:1080"))
        #expect(facts.balancer?.address == IPAddress("127.0.0.1"))
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func aV2HeaderAndTheRequestInOneWrite() async throws {
        let echo = try await EchoServer()
        let policy = RecordingPolicy()
        let gateway = try await gateway(policy)
        let client = try await RawClient.connect(to: gateway.address)
        let v2 = ProxyHeader.v2Signature + [0x21, 0x11, 0, 12, 127, 6, 5, 4, 127, 0, 0, 1, 0x9C, 0x40, 0x04, 0x38]
        try await client.send(v2 + [5, 1, 0])
        #expect(try await client.read(2) == [5, 0])
        try await client.send(SOCKS.socks5Connect(port: echo.port))
        #expect(Array(try await client.read(10).prefix(2)) == [5, 0])
        #expect(policy.seen.withLockedValue { $0.first?.client } == IPEndpoint("127.6.5.4:40000"))
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    @Test func withoutAHeaderOrWithABadOneTheConnectionCloses() async throws {
        let policy = RecordingPolicy()
        let gateway = try await gateway(policy)
        for input: [UInt8] in [
            [5, 1, 0],  // plain SOCKS from a balancer's address
            Array("PROXY UNKNOWN\r\n".utf8) + [5, 1, 0],  // names no client
            Array("PROXY TCP4 127.9.8.7 127.0.0.1 40000\r\n".utf8),  // malformed
            Array(repeating: UInt8(ascii: "P"), count: 200),  // no line end within 107 bytes
        ] {
            let client = try await RawClient.connect(to: gateway.address)
            try await client.send(input)
            #expect(try await client.readToEnd() == [], "\(input.prefix(20))")
        }
        #expect(policy.seen.withLockedValue { $0.isEmpty })
        try await gateway.stop()
    }
}
