import AccessPolicy
import Foundation
import Logging
import NIOCore
import NetAddress
import Testing

@testable import Gateway

/// `identgate run`'s wiring, started as the command starts it: SOCKS and metrics served,
/// a policy swapped while serving, and the lifecycle on record.
@Suite struct GatewayServiceTests {
    static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("service-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test func servesReloadsAndRecordsItsLifecycle() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let auditPath = directory.appendingPathComponent("audit.jsonl").path
        let audit = try AuditWriter(path: auditPath)
        audit.start()

        var configuration = GatewayConfiguration()
        configuration.listen = [IPEndpoint("127.0.0.1:0")!]
        configuration.negotiationTimeout = .seconds(5)
        configuration.connectTimeout = .seconds(5)
        var logger = Logger(label: "test-service")
        logger.logLevel = .critical
        let metrics = GatewayMetrics(version: "test", commit: "test")
        let service = GatewayService(
            settings: .init(configuration: configuration, eventLoops: 1, policyFile: "default.policy", version: "test"),
            engine: PolicyEngine(policy: DefaultPolicy.policy), policySHA256: "sha-default", audit: audit, metrics: metrics,
            logger: logger)
        let listening = try await service.start(metricsListener: .init(endpoint: IPEndpoint("127.0.0.1:0")!))
        let echo = try await EchoServer()
        var stopped = false
        defer {
            if !stopped { Task { _ = try? await service.stop(grace: .zero, reason: "test failed") } }
            Task { await echo.stop() }
        }
        let socks = try SocketAddress(ipAddress: "127.0.0.1", port: Int(listening.socks[0].port))

        // Ready: /healthz says so, and a CONNECT under the default policy is relayed.
        let metricsPort = try #require(listening.metrics?.port)
        let health = try await RawClient.connect(
            to: try SocketAddress(ipAddress: "127.0.0.1", port: Int(metricsPort)),
            sending: Array("GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".utf8))
        let answer = String(decoding: try await health.readToEnd(), as: UTF8.self)
        await health.close()
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")

        let allowed = try await RawClient.connect(to: socks, sending: [5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        #expect(try await allowed.read(2) == [5, 0])
        #expect(Array(try await allowed.read(10).prefix(2)) == [5, 0])
        try await allowed.send(Array("ping".utf8))
        #expect(try await allowed.read(4) == Array("ping".utf8))

        // A name looked up (not through a request: it would add records) is kept until a reload.
        _ = try await service.gateway.resolver.resolve("localhost", on: testGroup.next()).get()
        #expect(service.gateway.resolver.cachedNames == 1)

        // A policy with no rules: every request from now on is refused; the session
        // already relaying goes on. The kept names are dropped.
        service.replacePolicy(with: PolicyEngine(policy: Policy(rules: [])), sha256: "sha-empty", file: "empty.policy", testsPassed: 0)
        #expect(service.gateway.resolver.cachedNames == 0)
        let refused = try await RawClient.connect(to: socks, sending: [5, 1, 0] + SOCKS.socks5Connect(port: echo.port))
        #expect(try await refused.read(2) == [5, 0])
        #expect(Array(try await refused.read(10).prefix(2)) == [5, 2], "not allowed by the ruleset")
        await refused.close()
        try await allowed.send(Array("pong".utf8))
        #expect(try await allowed.read(4) == Array("pong".utf8))
        await allowed.close()

        stopped = true
        #expect(try await service.stop(grace: .seconds(2), reason: "SIGTERM"))
        audit.shutdown()

        let events = try String(contentsOfFile: auditPath, encoding: .utf8).split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return (object?["event"] as? String ?? "?", object?["reason"] as? String, object?["policySHA256"] as? String)
        }
        let names = events.map(\.0)
        #expect(names.first == "chain-start")
        #expect(names.filter { $0 == "gateway-start" }.count == 1)
        #expect(names.filter { $0 == "policy-reload" }.count == 1)
        #expect(names.filter { $0 == "decision" }.count == 2)
        #expect(names.filter { $0 == "session-end" }.count >= 1)
        #expect(names.last == "gateway-stop" || names.dropLast().last == "gateway-stop")
        #expect(events.first { $0.0 == "gateway-stop" }?.1 == "SIGTERM")
        #expect(events.filter { $0.0 == "decision" }.map(\.2) == ["sha-default", "sha-empty"])
    }

    /// Shutdown while a BIND waits for its peer: the session's end is on record, and says
    /// the gateway stopped (not that the client closed).
    @Test func aSessionStoppedBeforeItsReplySaysSo() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let auditPath = directory.appendingPathComponent("audit.jsonl").path
        let audit = try AuditWriter(path: auditPath)
        audit.start()
        var configuration = GatewayConfiguration()
        configuration.listen = [IPEndpoint("127.0.0.1:0")!]
        var logger = Logger(label: "test-service")
        logger.logLevel = .critical
        let service = GatewayService(
            settings: .init(configuration: configuration, eventLoops: 1, policyFile: "default.policy", version: "test"),
            engine: PolicyEngine(policy: DefaultPolicy.policy), policySHA256: "sha", audit: audit, logger: logger)
        let listening = try await service.start()
        let client = try await RawClient.connect(
            to: try SocketAddress(ipAddress: "127.0.0.1", port: Int(listening.socks[0].port)),
            sending: [5, 1, 0] + [5, 2, 0, 1, 127, 0, 0, 1, 0, 20])
        defer { Task { await client.close() } }
        #expect(try await client.read(2) == [5, 0])
        #expect(Array(try await client.read(10).prefix(2)) == [5, 0], "the first BIND reply: listening")
        try await service.stop(grace: .zero, reason: "SIGTERM")
        audit.shutdown()
        let ends = try String(contentsOfFile: auditPath, encoding: .utf8).split(separator: "\n").compactMap { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return object?["event"] as? String == "session-end" ? object?["reason"] as? String : nil
        }
        #expect(ends == ["gateway stopped before the reply"])
    }

    /// A listen address that cannot be bound: the error says which, and nothing keeps
    /// running (the threads are stopped too).
    @Test func aFailedStartStopsEverything() async throws {
        let occupied = try await EchoServer()
        defer { Task { await occupied.stop() } }
        var configuration = GatewayConfiguration()
        configuration.listen = [IPEndpoint("127.0.0.1:\(occupied.port)")!]
        let service = GatewayService(
            settings: .init(configuration: configuration, eventLoops: 1, policyFile: "default.policy", version: "test"),
            engine: PolicyEngine(policy: DefaultPolicy.policy), policySHA256: "sha", logger: Logger(label: "test-service"))
        await #expect(throws: ListenError.self) { _ = try await service.start() }
    }
}
