import AccessPolicy
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

/// Issue 23's invariants that need no socket (what counts as the gateway itself, which
/// metrics connection gives up its slot), and session numbers without an audit log.
@Suite struct LoopAndEndpointTests {
    func gateway(listening: [String]) -> GatewayContext {
        var logger = Logger(label: "loop-test")
        logger.logLevel = .critical
        let context = GatewayContext(
            configuration: GatewayConfiguration(), policy: PolicyEngine(policy: Policy(rules: [])), credentials: nil,
            resolver: HostResolver(threadPool: SessionOrderingTests.sharedPool, timeout: .seconds(5)),
            threadPool: SessionOrderingTests.sharedPool, logger: logger, audit: nil)
        context.ownListeners.withLockedValue { $0 = listening.compactMap(IPEndpoint.init) }
        return context
    }

    /// The kernel's meaning counts: 0.0.0.0 and :: reach this host, and so do every
    /// loopback address and every interface's address, mapped or not.
    @Test func everySpellingOfThisHostOnAListeningPortIsTheGateway() {
        let gateway = gateway(listening: ["127.0.0.1:1080", "127.0.0.1:9100"])
        for spelling in ["0.0.0.0", "::", "::ffff:0.0.0.0", "127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2", "::1"] {
            for port: UInt16 in [1080, 9100] {
                #expect(gateway.isOwnListener(IPEndpoint(address: IPAddress(spelling)!, port: port)), "\(spelling):\(port)")
            }
        }
        // (Link-local addresses aside: without a scope, which SOCKS cannot carry, nothing
        // connects to them, here or anywhere.)
        for address in LocalAddress.ofInterface("lo") + LocalAddress.ofInterface("eth0")
        where !address.description.lowercased().hasPrefix("fe80") {
            #expect(gateway.isOwnListener(IPEndpoint(address: address, port: 1080)), "\(address)")
        }
        // Another port of this host, and another host on the gateway's port, are not.
        #expect(!gateway.isOwnListener(IPEndpoint(address: IPAddress("0.0.0.0")!, port: 1081)))
        #expect(!gateway.isOwnListener(IPEndpoint(address: IPAddress("192.0.2.200")!, port: 1080)))
    }

    /// Issue 24: session numbers came from the audit writer, so with the audit log off
    /// every session was 0.
    @Test func sessionsAreNumberedWithoutAnAuditLog() {
        let gateway = gateway(listening: [])
        #expect(gateway.audit == nil)
        #expect(gateway.nextSessionID() == 1)
        #expect(gateway.nextSessionID() == 2)
    }

    @Test func theLongestWaitingMetricsConnectionGivesUpItsSlot() throws {
        let connections = MetricsConnections(capacity: 2)
        let first = EmbeddedChannel()
        let second = EmbeddedChannel()
        let third = EmbeddedChannel()
        for channel in [first, second, third] {
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }
        #expect(connections.admit(first))
        #expect(connections.admit(second))
        // `second` is answering a request: it keeps its slot; `first` waits, and goes.
        connections.setWaiting(second, since: nil)
        #expect(connections.admit(third))
        #expect(!first.isActive)
        #expect(second.isActive)
        #expect(connections.evicted.withLockedValue { $0 } == 1)
        // Every slot answering: a newcomer is refused.
        connections.setWaiting(third, since: nil)
        #expect(!connections.admit(EmbeddedChannel()))
        _ = try? second.finish()
        _ = try? third.finish()
    }
}
