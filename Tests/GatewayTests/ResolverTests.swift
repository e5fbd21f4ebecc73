import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

/// A resolver that hangs (a DNS server that never answers) costs only its own pool.
@Suite struct ResolverTests {
    /// Lookups that block until the test opens the gate.
    final class StalledDNS: Sendable {
        let open = NIOLockedValueBox(false)
        let started = NIOLockedValueBox(0)
        var lookup: HostResolver.Lookup {
            { _ in
                self.started.withLockedValue { $0 += 1 }
                while !self.open.withLockedValue({ $0 }) { usleep(1000) }
                return [IPAddress("127.0.0.1")!]
            }
        }
    }

    @Test func lookupsBeyondTheBoundFailAtOnceAndAreCounted() async throws {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let dns = StalledDNS()
        let resolver = HostResolver(threadPool: pool, timeout: .seconds(30), maxInFlight: 2, lookup: dns.lookup)
        let loop = testGroup.next()
        let first = resolver.resolve("a.example", on: loop)
        let second = resolver.resolve("b.example", on: loop)
        let third = try await resolver.resolve("c.example", on: loop).get()
        #expect(third == [], "saturated: fails at once instead of queueing behind stalled lookups")
        #expect(resolver.saturated == 1)
        dns.open.withLockedValue { $0 = true }
        #expect(try await first.get() == [IPAddress("127.0.0.1")!])
        #expect(try await second.get() == [IPAddress("127.0.0.1")!])
        #expect(try await resolver.resolve("d.example", on: loop).get() == [IPAddress("127.0.0.1")!], "recovered")
        try await pool.shutdownGracefully()
    }

    @Test func aTimedOutLookupAnswersEmptyAndFreesItsPlaceWhenItEnds() async throws {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let dns = StalledDNS()
        let resolver = HostResolver(threadPool: pool, timeout: .milliseconds(50), maxInFlight: 1, lookup: dns.lookup)
        let loop = testGroup.next()
        #expect(try await resolver.resolve("slow.example", on: loop).get() == [], "timed out")
        #expect(try await resolver.resolve("next.example", on: loop).get() == [], "the stalled lookup still holds its place")
        dns.open.withLockedValue { $0 = true }
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await resolver.resolve("after.example", on: loop).get() == [IPAddress("127.0.0.1")!])
        try await pool.shutdownGracefully()
    }

    /// Password checks have threads of their own: stalled lookups do not hold them up.
    @Test func stalledLookupsDoNotStarvePasswordChecks() async throws {
        struct Accepting: PasswordVerifier {
            func check(user: String, password: [UInt8]) -> PasswordCheck { .accepted(.file) }
        }
        let passwords = NIOThreadPool(numberOfThreads: 1)
        passwords.start()
        let lookups = NIOThreadPool(numberOfThreads: 1)
        lookups.start()
        let dns = StalledDNS()
        var configuration = GatewayConfiguration()
        configuration.methods = [.usernamePassword]
        var logger = Logger(label: "resolver-test")
        logger.logLevel = .critical
        let gateway = GatewayContext(
            configuration: configuration, policy: PolicyEngine(policy: DefaultPolicy.policy), credentials: Accepting(),
            resolver: HostResolver(threadPool: lookups, timeout: .seconds(30), lookup: dns.lookup), threadPool: passwords,
            logger: logger, audit: nil)
        func client() async throws -> NIOAsyncTestingChannel { try await negotiatingClient(gateway) }
        let auth: [UInt8] = [5, 1, 2] + [1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "p")]
        // A client whose host name stalls the resolver's only thread.
        let stalled = try await client()
        try await stalled.writeInbound(ByteBuffer(bytes: auth + [5, 1, 0, 3, 9] + Array("x.example".utf8) + [0, 80]))
        for _ in 0..<500 where dns.started.withLockedValue({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(2)) }
        #expect(dns.started.withLockedValue { $0 } == 1)
        // Another client still gets through its password check.
        let next = try await client()
        try await next.writeInbound(ByteBuffer(bytes: auth))
        var received: [UInt8] = []
        for _ in 0..<500 where received.count < 4 {
            while let buffer = try await next.readOutbound(as: ByteBuffer.self) { received += buffer.readableBytesView }
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(received == [5, 2, 1, 0], "method selection, then the password accepted")
        dns.open.withLockedValue { $0 = true }
        _ = try? await stalled.close()
        _ = try? await next.close()
        try await passwords.shutdownGracefully()
        try await lookups.shutdownGracefully()
    }
}
