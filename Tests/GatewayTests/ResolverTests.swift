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

    /// Requests for a name whose lookup is under way wait for it: one getaddrinfo and one
    /// place among the bound, however many ask; other names still find their places.
    @Test func requestsForANameUnderWayShareItsLookup() async throws {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let dns = StalledDNS()
        let metrics = GatewayMetrics(version: "1", commit: "c")
        let resolver = HostResolver(threadPool: pool, timeout: .seconds(30), maxInFlight: 2, metrics: metrics, lookup: dns.lookup)
        let loop = testGroup.next()
        let same = (0..<5).map { _ in resolver.resolve("slow.example", on: loop) }
        let other = resolver.resolve("other.example", on: loop)
        for _ in 0..<300 where dns.started.withLockedValue({ $0 }) < 2 { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(50))
        #expect(dns.started.withLockedValue { $0 } == 2, "one lookup for five requests, one for the other name")
        #expect(try await resolver.resolve("third.example", on: loop).get() == [], "both places taken: refused at once")
        #expect(resolver.saturated == 1)
        dns.open.withLockedValue { $0 = true }
        for future in same + [other] { #expect(try await future.get() == [IPAddress("127.0.0.1")!]) }
        let exposition = String(decoding: metrics.registry.emitToBuffer(), as: UTF8.self)
        #expect(exposition.contains(#"identgate_name_lookups_total{outcome="joined"} 4"#))
        #expect(exposition.contains(#"identgate_name_lookups_total{outcome="resolved"} 2"#))
        #expect(exposition.contains(#"identgate_name_lookups_total{outcome="refused"} 1"#))
        try await pool.shutdownGracefully()
    }

    /// `--resolve-cache`: a name that resolved is kept for the time given, whatever its
    /// spelling's case; one that did not is looked up each time; time zero keeps nothing.
    @Test func answersAreKeptForTheirTimeAndOnlyWhenTheyFoundAddresses() async throws {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let lookups = NIOLockedValueBox<[String]>([])
        let lookup: HostResolver.Lookup = { name in
            lookups.withLockedValue { $0.append(name) }
            return name.hasPrefix("gone") ? [] : [IPAddress("192.0.2.7")!]
        }
        let loop = testGroup.next()
        let kept = HostResolver(threadPool: pool, timeout: .seconds(5), cacheTTL: .hours(1), lookup: lookup)
        #expect(try await kept.resolve("www.example", on: loop).get() == [IPAddress("192.0.2.7")!])
        #expect(try await kept.resolve("WWW.Example", on: loop).get() == [IPAddress("192.0.2.7")!])
        #expect(kept.cachedAddresses(of: "www.example") == [IPAddress("192.0.2.7")!])
        #expect(try await kept.resolve("gone.example", on: loop).get() == [])
        #expect(try await kept.resolve("gone.example", on: loop).get() == [])
        #expect(lookups.withLockedValue { $0 } == ["www.example", "gone.example", "gone.example"])

        let brief = HostResolver(threadPool: pool, timeout: .seconds(5), cacheTTL: .milliseconds(50), lookup: lookup)
        #expect(try await brief.resolve("www.example", on: loop).get() == [IPAddress("192.0.2.7")!])
        try await Task.sleep(for: .milliseconds(100))
        #expect(brief.cachedAddresses(of: "www.example") == nil, "expired")
        #expect(try await brief.resolve("www.example", on: loop).get() == [IPAddress("192.0.2.7")!])
        #expect(lookups.withLockedValue { $0.count } == 5)

        let uncached = HostResolver(threadPool: pool, timeout: .seconds(5), lookup: lookup)
        _ = try await uncached.resolve("www.example", on: loop).get()
        _ = try await uncached.resolve("www.example", on: loop).get()
        #expect(lookups.withLockedValue { $0.count } == 7)
        try await pool.shutdownGracefully()
    }

    /// What a client can make the cache hold is bounded: past `cacheCapacity` names, the
    /// oldest are dropped.
    @Test func theCacheHoldsAtMostItsCapacity() async throws {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let resolver = HostResolver(threadPool: pool, timeout: .seconds(5), cacheTTL: .hours(1)) { _ in [IPAddress("192.0.2.7")!] }
        let loop = testGroup.next()
        let names = (0...HostResolver.cacheCapacity).map { "host\($0).example" }
        for name in names { _ = try await resolver.resolve(name, on: loop).get() }
        #expect(resolver.cachedAddresses(of: names[0]) == nil, "the oldest, dropped")
        #expect(resolver.cachedAddresses(of: names[names.count - 1]) != nil)
        #expect(resolver.cachedNames == HostResolver.cacheCapacity)
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
