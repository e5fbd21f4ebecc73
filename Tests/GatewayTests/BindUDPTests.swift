import AccessPolicy
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

func endpoint(ipv4 bytes: ArraySlice<UInt8>) -> IPEndpoint {
    let octets = Array(bytes)
    return IPEndpoint(address: .v4(IPv4Address(octets: octets[0..<4])), port: UInt16(octets[4]) << 8 | UInt16(octets[5]))
}

@Suite struct BindTests {
    /// Connects to the address BIND's first reply gave.
    func connectPeer(to listening: IPEndpoint) async throws -> RawClient {
        try await RawClient.connect(to: try SocketAddress(ipAddress: "\(listening.address)", port: Int(listening.port)))
    }

    @Test func socks4BindBothRepliesAndDataBothWays() async throws {
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([4, 2, 0, 21, 127, 0, 0, 1] + Array("alice".utf8) + [0])
        let first = try await client.read(8)
        #expect(Array(first.prefix(2)) == [0, 90])
        #expect(Array(first[4..<8]) == [127, 0, 0, 1], "the listening address")
        let listening = endpoint(ipv4: first[4..<8] + first[2..<4])
        let peer = try await connectPeer(to: listening)
        let second = try await client.read(8)
        #expect(Array(second.prefix(2)) == [0, 90])
        #expect(endpoint(ipv4: second[4..<8] + second[2..<4]) == peer.channel.localAddress!.ipEndpoint!, "the peer's address")
        try await peer.send(Array("from the server".utf8))
        #expect(try await client.read(15) == Array("from the server".utf8))
        try await client.send(Array("from the client".utf8))
        #expect(try await peer.read(15) == Array("from the client".utf8))
        await client.close()
        #expect(try await peer.readToEnd() == [], "the peer's side closes with the client's")
        try await gateway.stop()
    }

    @Test func socks5BindBothRepliesAndDataBothWays() async throws {
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + [5, 2, 0, 1, 127, 0, 0, 1, 0, 20])
        #expect(try await client.read(2) == [5, 0])
        let first = try await client.read(10)
        #expect(Array(first.prefix(4)) == [5, 0, 0, 1])
        let peer = try await connectPeer(to: endpoint(ipv4: first[4..<10]))
        let second = try await client.read(10)
        #expect(Array(second.prefix(4)) == [5, 0, 0, 1])
        #expect(endpoint(ipv4: second[4..<10]) == peer.channel.localAddress!.ipEndpoint!)
        try await peer.send([1, 2, 3])
        #expect(try await client.read(3) == [1, 2, 3])
        try await client.send([4, 5])
        #expect(try await peer.read(2) == [4, 5])
        await client.close()
        await peer.close()
        try await gateway.stop()
    }

    @Test func socks4WrongPeerIsRefusedAndBothClosed() async throws {
        let gateway = try await TestGateway.start()
        let client = try await RawClient.connect(to: gateway.address)
        // The client expects 127.0.0.2; the peer will come from 127.0.0.1.
        try await client.send([4, 2, 0, 21, 127, 0, 0, 2, 0])
        let first = try await client.read(8)
        #expect(Array(first.prefix(2)) == [0, 90])
        let peer = try await connectPeer(to: endpoint(ipv4: first[4..<8] + first[2..<4]))
        #expect(try await client.readToEnd() == [0, 91, 0, 0, 0, 0, 0, 0])
        #expect(try await peer.readToEnd() == [], "the wrong peer is closed too")
        try await gateway.stop()
    }

    @Test func noPeerInTimeGetsAFailureSecondReply() async throws {
        let gateway = try await TestGateway.start(configure: { $0.bindTimeout = .milliseconds(300) })
        let socks5 = try await RawClient.connect(to: gateway.address)
        try await socks5.send([5, 1, 0] + [5, 2, 0, 1, 127, 0, 0, 1, 0, 20])
        #expect(Array(try await socks5.read(12).prefix(4)) == [5, 0, 5, 0])
        #expect(try await socks5.readToEnd(timeout: .seconds(3)) == [5, 6, 0, 1, 0, 0, 0, 0, 0, 0])
        let socks4 = try await RawClient.connect(to: gateway.address)
        try await socks4.send([4, 2, 0, 21, 127, 0, 0, 1, 0])
        #expect(try await socks4.read(8).prefix(2) == [0, 90])
        #expect(try await socks4.readToEnd(timeout: .seconds(3)) == [0, 91, 0, 0, 0, 0, 0, 0])
        try await gateway.stop()
    }

    @Test func bindDeniedByPolicy() async throws {
        let policy = PolicyCompiler.compile("allow connect from 127.0.0.0/8", file: "p").policy!
        let gateway = try await TestGateway.start(policy: PolicyEngine(policy: policy))
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send([5, 1, 0] + [5, 2, 0, 1, 127, 0, 0, 1, 0, 20])
        #expect(try await client.readToEnd() == [5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
        try await gateway.stop()
    }

    /// Every path closes the listening socket: timed out, client gone, peer arrived.
    /// The time-out rounds use a gateway with a short BIND time-out, the others one with a
    /// long one, so that no peer races a time-out on a slow (sanitized, loaded) machine.
    @Test func listeningSocketsAreClosedOnEveryPath() async throws {
        let quick = try await TestGateway.start(configure: { $0.bindTimeout = .milliseconds(100) })
        let patient = try await TestGateway.start(configure: { $0.bindTimeout = .seconds(30) })
        for round in 0..<60 {
            let gateway = round % 3 == 0 ? quick : patient
            let client = try await RawClient.connect(to: gateway.address)
            try await client.send([4, 2, 0, 21, 127, 0, 0, 1, 0])
            let first = try await client.read(8)
            switch round % 3 {
            case 0:
                _ = try await client.readToEnd(timeout: .seconds(3))
            case 1:
                await client.close()
            default:
                let peer = try await connectPeer(to: endpoint(ipv4: first[4..<8] + first[2..<4]))
                _ = try await client.read(8)
                await peer.close()
                await client.close()
            }
        }
        let deadline = ContinuousClock.now + .seconds(3)
        while quick.server.openBindListeners + patient.server.openBindListeners > 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(quick.server.openBindListeners == 0)
        #expect(patient.server.openBindListeners == 0)
        try await quick.stop()
        try await patient.stop()
    }
}

/// A UDP socket for tests: sends datagrams and collects those that arrive.
final class UDPPeer: Sendable {
    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        typealias OutboundOut = AddressedEnvelope<ByteBuffer>
        let received: NIOLockedValueBox<[(from: SocketAddress, bytes: [UInt8])]>
        let echo: Bool

        init(received: NIOLockedValueBox<[(from: SocketAddress, bytes: [UInt8])]>, echo: Bool) {
            self.received = received
            self.echo = echo
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            received.withLockedValue { $0.append((envelope.remoteAddress, Array(envelope.data.readableBytesView))) }
            if echo { context.writeAndFlush(data, promise: nil) }
        }
    }

    let channel: any Channel
    private let received = NIOLockedValueBox<[(from: SocketAddress, bytes: [UInt8])]>([])

    /// `echo`: send every datagram back to where it came from.
    init(echo: Bool = false) async throws {
        let received = self.received
        channel = try await DatagramBootstrap(group: testGroup)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received, echo: echo))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    var port: UInt16 { UInt16(channel.localAddress!.port!) }

    func send(_ bytes: [UInt8], to address: SocketAddress) async throws {
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: ByteBuffer(bytes: bytes)))
    }

    /// The datagrams that arrive within `wait`.
    func datagrams(within wait: Duration = .seconds(3), atLeast count: Int = 1) async throws -> [[UInt8]] {
        let deadline = ContinuousClock.now + wait
        while received.withLockedValue({ $0.count }) < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        return received.withLockedValue { $0.map(\.bytes) }
    }

    func stop() async {
        try? await channel.close()
    }
}

@Suite struct UDPAssociateTests {
    /// Opens an association from `client` (zeros: source not announced) and returns the
    /// control connection and the relay's address.
    func associate(_ gateway: TestGateway, announcing source: [UInt8] = [0, 0, 0, 0, 0, 0]) async throws -> (
        RawClient, SocketAddress
    ) {
        let control = try await RawClient.connect(to: gateway.address)
        try await control.send([5, 1, 0] + [5, 3, 0, 1] + source)
        #expect(try await control.read(2) == [5, 0])
        let reply = try await control.read(10)
        #expect(Array(reply.prefix(4)) == [5, 0, 0, 1])
        let relay = endpoint(ipv4: reply[4..<10])
        #expect(relay.address == IPAddress("127.0.0.1"), "the relay listens where the client reached the gateway")
        return (control, try SocketAddress(ipAddress: "\(relay.address)", port: Int(relay.port)))
    }

    func header(port: UInt16, fragment: UInt8 = 0) -> [UInt8] {
        [0, 0, fragment, 1, 127, 0, 0, 1, UInt8(port >> 8), UInt8(port & 0xff)]
    }

    @Test func datagramsAreRelayedAndRepliesWrapped() async throws {
        let echo = try await UDPPeer(echo: true)
        let client = try await UDPPeer()
        let gateway = try await TestGateway.start()
        let (control, relay) = try await associate(gateway)
        try await client.send(header(port: echo.port) + Array("ping".utf8), to: relay)
        #expect(try await client.datagrams() == [header(port: echo.port) + Array("ping".utf8)])
        #expect(try await echo.datagrams() == [Array("ping".utf8)], "the destination sees the payload only")
        await control.close()
        try await gateway.stop()
        await echo.stop()
        await client.stop()
    }

    @Test func deniedDestinationIsDropped() async throws {
        let allowed = try await UDPPeer(echo: true)
        let denied = try await UDPPeer(echo: true)
        let policy = PolicyCompiler.compile(
            "allow connect from 127.0.0.0/8\nallow udp from 127.0.0.0/8 to 127.0.0.1 port \(allowed.port)", file: "p"
        ).policy!
        let gateway = try await TestGateway.start(policy: PolicyEngine(policy: policy))
        let client = try await UDPPeer()
        let (control, relay) = try await associate(gateway)
        try await client.send(header(port: denied.port) + [1], to: relay)
        try await client.send(header(port: allowed.port) + [2], to: relay)
        #expect(try await client.datagrams(within: .seconds(2), atLeast: 2) == [header(port: allowed.port) + [2]])
        #expect(try await denied.datagrams(within: .milliseconds(10)) == [])
        await control.close()
        try await gateway.stop()
        for peer in [allowed, denied, client] { await peer.stop() }
    }

    @Test func foreignSourceAndFragmentsAreDropped() async throws {
        let echo = try await UDPPeer(echo: true)
        let client = try await UDPPeer()
        let stranger = try await UDPPeer()
        let gateway = try await TestGateway.start()
        // The client announces its source port; the stranger sends from another.
        let (control, relay) = try await associate(
            gateway, announcing: [127, 0, 0, 1, UInt8(client.port >> 8), UInt8(client.port & 0xff)])
        try await stranger.send(header(port: echo.port) + [9], to: relay)
        try await client.send(header(port: echo.port, fragment: 1) + [8], to: relay)
        try await client.send(header(port: echo.port) + [7], to: relay)
        #expect(try await client.datagrams(within: .seconds(2), atLeast: 2) == [header(port: echo.port) + [7]])
        #expect(try await echo.datagrams(within: .milliseconds(10)) == [[7]])
        #expect(try await stranger.datagrams(within: .milliseconds(10)) == [])
        await control.close()
        try await gateway.stop()
        for peer in [echo, client, stranger] { await peer.stop() }
    }

    /// Datagrams to a name still being resolved start no second lookup: they are dropped
    /// (and counted), and the first goes on once the name resolves.
    @Test func oneLookupPerNameInFlight() async throws {
        let echo = try await UDPPeer(echo: true)
        let client = try await UDPPeer()
        let dns = ResolverTests.StalledDNS()
        let gateway = try await TestGateway.start(lookup: dns.lookup)
        let (control, relay) = try await associate(gateway)
        let name = Array("slow.example".utf8)
        let toName = [0, 0, 0, 3, UInt8(name.count)] + name + [UInt8(echo.port >> 8), UInt8(echo.port & 0xff)]
        for index in 0..<20 { try await client.send(toName + [UInt8(index)], to: relay) }
        for _ in 0..<300 where dns.started.withLockedValue({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(dns.started.withLockedValue { $0 } == 1, "one lookup for twenty datagrams")
        dns.open.withLockedValue { $0 = true }
        #expect(try await echo.datagrams(within: .seconds(2)) == [[0]], "the first datagram, once resolved")
        // Resolved now: the next datagram needs no lookup.
        try await client.send(toName + [99], to: relay)
        #expect(try await echo.datagrams(within: .seconds(2), atLeast: 2) == [[0], [99]])
        #expect(dns.started.withLockedValue { $0 } == 1)
        await control.close()
        try await gateway.stop()
        await echo.stop()
        await client.stop()
    }

    @Test func closingTheControlConnectionEndsTheAssociation() async throws {
        let echo = try await UDPPeer(echo: true)
        let client = try await UDPPeer()
        let gateway = try await TestGateway.start()
        let (control, relay) = try await associate(gateway)
        await control.close()
        try await Task.sleep(for: .milliseconds(200))
        try? await client.send(header(port: echo.port) + [1], to: relay)
        #expect(try await echo.datagrams(within: .milliseconds(300)) == [], "the relay is gone")
        try await gateway.stop()
        await echo.stop()
        await client.stop()
    }
}
