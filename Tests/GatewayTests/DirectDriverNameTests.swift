import AccessPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NetAddress
import Testing

@testable import Gateway

/// Host names on the direct driver: looked up on the resolver's pool while the loop goes
/// on, then decided and carried by the loop (SOCKS4a, SOCKS5's domain, HTTP CONNECT to a
/// name); each address tried has its own decision record, as on SwiftNIO's path; a
/// decision that must wait for identd goes to SwiftNIO after the lookup with every byte.
@Suite struct DirectDriverNameTests {
    /// A resolver that answers from a table, after `delay`, and counts its lookups; with
    /// `gated`, not before the test opens the gate (at most 5 s).
    final class Names: Sendable {
        let table: [String: [IPAddress]]
        let delay: Duration
        let lookups = NIOLockedValueBox(0)
        let gate: NIOLockedValueBox<Bool>
        init(_ table: [String: [IPAddress]], delay: Duration = .zero, gated: Bool = false) {
            self.table = table
            self.delay = delay
            gate = NIOLockedValueBox(!gated)
        }
        var lookup: HostResolver.Lookup {
            { name in
                self.lookups.withLockedValue { $0 += 1 }
                if self.delay > .zero { Thread.sleep(forTimeInterval: Double(self.delay.components.attoseconds) / 1e18) }
                for _ in 0..<500 where !self.gate.withLockedValue({ $0 }) { Thread.sleep(forTimeInterval: 0.01) }
                return self.table[name.lowercased()] ?? []
            }
        }
        func open() { gate.withLockedValue { $0 = true } }
    }

    /// Two addresses, the first refusing (nothing listens on 127.0.0.2 at the echo's port).
    static let twoAddresses = ["two.test": [IPAddress("127.0.0.2")!, IPAddress("127.0.0.1")!]]

    static func socks5Name(_ name: String, port: UInt16) -> [UInt8] {
        [5, 1, 0] + SOCKS.socks5Connect(port: port, host: [3, UInt8(name.utf8.count)] + Array(name.utf8))
    }

    /// An audit log in a fresh folder; `records` reads it after the gateway stopped (the
    /// first call ends the writer and removes the folder, later calls read what it held).
    final class Audit {
        let directory: URL
        let writer: AuditWriter
        private var lines: [String]?
        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("direct-names-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            writer = try AuditWriter(path: directory.appendingPathComponent("audit.jsonl").path)
            writer.start()
        }
        func records(_ event: String) throws -> [String] {
            if lines == nil {
                writer.shutdown()
                defer { try? FileManager.default.removeItem(at: directory) }
                let text = try String(contentsOfFile: directory.appendingPathComponent("audit.jsonl").path, encoding: .utf8)
                lines = text.split(separator: "\n").map(String.init)
            }
            return (lines ?? []).filter { $0.contains(#""event":"\#(event)""#) }
        }
    }

    @Test func aSOCKS5NameIsLookedUpAndCarriedHereAddressByAddress() async throws {
        let echo = try await EchoServer()
        let audit = try Audit()
        let names = Names(Self.twoAddresses)
        let gateway = try await TestGateway.start(configure: DirectDriverTests.direct, audit: audit.writer, lookup: names.lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.socks5Name("two.test", port: echo.port) + Array("early".utf8))
        let reply = try await client.read(12)
        #expect(Array(reply.prefix(4)) == [5, 0, 5, 0])
        #expect(try await client.read(5) == Array("early".utf8))
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        #expect(names.lookups.withLockedValue { $0 } == 1)
        await client.close()
        try await gateway.stop()
        await echo.stop()
        let decisions = try audit.records("decision")
        #expect(decisions.count == 2, "one decision per address tried: \(decisions)")
        #expect(decisions.first?.contains(#""resolved":"127.0.0.2""#) == true)
        #expect(decisions.last?.contains(#""resolved":"127.0.0.1""#) == true)
    }

    /// `--resolve-cache`: a name's second connection within the time uses the first's
    /// answer; with 0, each looks it up.
    @Test(arguments: [(TimeAmount.seconds(10), 1), (.zero, 2)])
    func aNameLookedUpAMomentAgoIsNotLookedUpAgain(ttl: TimeAmount, lookups: Int) async throws {
        let echo = try await EchoServer()
        let names = Names(["one.test": [IPAddress("127.0.0.1")!]])
        let gateway = try await TestGateway.start(
            configure: {
                DirectDriverTests.direct(&$0)
                $0.resolveCacheTTL = ttl
            }, lookup: names.lookup)
        for spelling in ["one.test", "ONE.test"] {
            let client = try await RawClient.connect(to: gateway.address)
            try await client.send(Self.socks5Name(spelling, port: echo.port) + [42])
            #expect(Array(try await client.read(12).prefix(4)) == [5, 0, 5, 0])
            #expect(try await client.read(1) == [42])
            await client.close()
        }
        #expect(names.lookups.withLockedValue { $0 } == lookups)
        try await gateway.stop()
        await echo.stop()
    }

    @Test func anHTTPConnectToANameIsCarriedHere() async throws {
        let echo = try await EchoServer()
        let gateway = try await TestGateway.start(configure: DirectDriverTests.direct, lookup: Names(Self.twoAddresses).lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(DirectDriverTests.connectHead("two.test:\(echo.port)") + Array("early".utf8))
        let answer = try await client.read(DirectDriverTests.established.utf8.count + 5)
        #expect(String(decoding: answer, as: UTF8.self) == DirectDriverTests.established + "early")
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    /// A name that does not resolve is decided (a rule may name it) and recorded; the
    /// client hears "host unreachable" from the loop.
    @Test func aNameThatDoesNotResolveIsDecidedAndUnreachable() async throws {
        let audit = try Audit()
        let gateway = try await TestGateway.start(configure: DirectDriverTests.direct, audit: audit.writer, lookup: Names([:]).lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.socks5Name("nowhere.test", port: 9))
        let reply = try await client.readToEnd(timeout: .seconds(5))
        #expect(Array(reply.prefix(4)) == [5, 0, 5, 4])
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        try await gateway.stop()
        #expect(try audit.records("decision").count == 1)
    }

    /// A lookup that does not answer within the resolver's time-out (`--connect-timeout`)
    /// leaves the name unresolved, decided and answered by the loop; the late answer finds
    /// nothing to do.
    @Test func aLookupThatDoesNotAnswerInTimeIsUnresolved() async throws {
        let echo = try await EchoServer()
        let names = Names(["stalled.test": [IPAddress("127.0.0.1")!]], gated: true)
        let gateway = try await TestGateway.start(
            configure: {
                DirectDriverTests.direct(&$0)
                $0.connectTimeout = .milliseconds(500)
            }, lookup: names.lookup)
        let client = try await RawClient.connect(to: gateway.address)
        let started = ContinuousClock.now
        try await client.send(Self.socks5Name("stalled.test", port: echo.port))
        let reply = try await client.readToEnd(timeout: .seconds(5))
        #expect(Array(reply.prefix(4)) == [5, 0, 5, 4])
        #expect(ContinuousClock.now - started >= .milliseconds(450))
        names.open()
        try await Task.sleep(for: .milliseconds(100))
        #expect(echo.peers.withLockedValue { $0 }.isEmpty)
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        try await gateway.stop()
        await echo.stop()
    }

    /// What the client sends while its name is looked up reaches the destination after
    /// what it sent with the request, in order.
    @Test func bytesSentDuringTheLookupFollowInOrder() async throws {
        let echo = try await EchoServer()
        let names = Names(Self.twoAddresses, delay: .milliseconds(300))
        let gateway = try await TestGateway.start(configure: DirectDriverTests.direct, lookup: names.lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.socks5Name("two.test", port: echo.port) + Array("one ".utf8))
        try await Task.sleep(for: .milliseconds(100))
        try await client.send(Array("two".utf8))
        #expect(Array(try await client.read(12).prefix(4)) == [5, 0, 5, 0])
        #expect(String(decoding: try await client.read(7), as: UTF8.self) == "one two")
        await client.close()
        try await gateway.stop()
        await echo.stop()
    }

    /// A client that leaves during its lookup ends there: nothing is decided, recorded or
    /// connected when the answer comes, and the loop serves on.
    @Test func aClientThatLeavesDuringTheLookupEndsThere() async throws {
        let echo = try await EchoServer()
        let audit = try Audit()
        let names = Names(["slow.test": [IPAddress("127.0.0.1")!]], gated: true)
        let gateway = try await TestGateway.start(configure: DirectDriverTests.direct, audit: audit.writer, lookup: names.lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.socks5Name("slow.test", port: echo.port))
        #expect(try await client.read(2) == [5, 0])
        await client.close()
        // The loop sees the close at once (its own thread); the answer comes after it.
        try await Task.sleep(for: .milliseconds(300))
        names.open()
        try await Task.sleep(for: .milliseconds(200))
        #expect(names.lookups.withLockedValue { $0 } == 1)
        #expect(echo.peers.withLockedValue { $0 }.isEmpty)
        try await expectNormalRequestSucceeds(gateway: gateway, echo: echo)
        try await gateway.stop()
        await echo.stop()
        #expect(try audit.records("decision").count == 1, "only the normal request's")
    }

    /// A later address whose decision would wait for identd cannot go to SwiftNIO (the
    /// first address's decision is on record): the session fails with a general failure,
    /// and its end is recorded once.
    @Test func aLaterAddressThatWouldWaitForIdentdEndsTheSession() async throws {
        let echo = try await EchoServer()
        let audit = try Audit()
        let policy = try #require(
            PolicyCompiler.compile(
                """
                ident from 127.0.0.0/8 timeout 1s
                allow connect to 127.0.0.2
                allow connect from 127.0.0.0/8 ident label "verified"
                """, file: "later.policy"
            ).policy)
        let gateway = try await TestGateway.start(
            configure: DirectDriverTests.direct, policy: PolicyEngine(policy: policy), audit: audit.writer,
            lookup: Names(Self.twoAddresses).lookup)
        let client = try await RawClient.connect(to: gateway.address)
        try await client.send(Self.socks5Name("two.test", port: echo.port))
        let reply = try await client.readToEnd(timeout: .seconds(5))
        #expect(Array(reply.prefix(4)) == [5, 0, 5, 1])
        #expect(gateway.server.connectionsHandedToSwiftNIO == 0)
        #expect(echo.peers.withLockedValue { $0 }.isEmpty)
        try await gateway.stop()
        await echo.stop()
        #expect(try audit.records("session-end").count == 1)
        let decisions = try audit.records("decision")
        #expect(decisions.count == 1 && decisions.first?.contains(#""resolved":"127.0.0.2""#) == true, "\(decisions)")
    }

    /// A decision that must wait for identd is SwiftNIO's: after the lookup, the loop hands
    /// the connection over with the request and what the client sent during the lookup;
    /// SwiftNIO's session looks the name up again, asks identd, and relays those bytes.
    @Test func aNameWhoseDecisionWaitsForIdentdGoesToSwiftNIOWithEveryByte() async throws {
        let echo = try await EchoServer()
        let identd = try await TestIdentd(.answer("alice"))
        var logger = Logger(label: "test-ident")
        logger.logLevel = .critical
        let identClient = IdentClient(group: testGroup, port: identd.port, logger: logger)
        let policy = try #require(PolicyCompiler.compile(IdentTests.policyText, file: "ident.policy").policy)
        let names = Names(["named.test": [IPAddress("127.0.0.1")!]], delay: .milliseconds(200))
        let gateway = try await TestGateway.start(
            configure: DirectDriverTests.direct, policy: PolicyStore(PolicyEngine(policy: policy), identLookup: identClient.lookup),
            lookup: names.lookup)
        let client = try await RawClient.connect(to: gateway.address)
        let name = Array("named.test".utf8)
        try await client.send([4, 1] + SOCKS.port(echo.port) + [0, 0, 0, 1] + Array("alice".utf8) + [0] + name + [0] + Array("one ".utf8))
        try await Task.sleep(for: .milliseconds(50))
        try await client.send(Array("two".utf8))
        let reply = try await client.read(8, timeout: .seconds(10))
        #expect(reply[1] == 90)
        #expect(String(decoding: try await client.read(7), as: UTF8.self) == "one two")
        #expect(gateway.server.connectionsHandedToSwiftNIO == 1)
        #expect(names.lookups.withLockedValue { $0 } == 1, "SwiftNIO's session finds the loop's answer kept (--resolve-cache)")
        await client.close()
        try await gateway.stop()
        await identd.stop()
        await echo.stop()
    }
}
