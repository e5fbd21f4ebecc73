import AccessPolicy
import Testing

@testable import DanteImport

@Suite struct DanteImportTests {
    func translated(_ text: String) throws -> DanteTranslation {
        DanteTranslator.translate(try DanteConfig(parsing: text), file: "sockd.conf") { ["http": 80, "ssh": 22][$0] }
    }

    @Test func settingsAndBlocksWithTheirLines() throws {
        let config = try DanteConfig(parsing: """
            internal: 10.1.1.1 port = 1080   # the inside
            socks pass { from: 10.0.0.0/8 to: 0/0
                command: connect }
            route {
              from: 0/0 to: 0/0 via: 192.0.2.1 port = 1080
            }
            """)
        #expect(config.settings.map(\.key) == ["internal"])
        #expect(config.settings[0].values == ["10.1.1.1", "port", "=", "1080"])
        #expect(config.blocks.map(\.kind) == [.socks, .route])
        #expect(config.blocks[0].line == 2 && config.blocks[0].passes == true)
        #expect(config.blocks[0].values("command") == ["connect"])
        #expect(config.blocks[1].values("via") == ["192.0.2.1", "port", "=", "1080"])
    }

    @Test func syntaxErrorsSayTheLine() {
        #expect(throws: DanteConfig.SyntaxError.self) { try DanteConfig(parsing: "socks pass {\n from: 0/0\n") }
        #expect(throws: DanteConfig.SyntaxError.self) { try DanteConfig(parsing: "socks maybe { }") }
        #expect(throws: DanteConfig.SyntaxError.self) { try DanteConfig(parsing: "}") }
    }

    @Test func rulesPortsMethodsAndTheRunLine() throws {
        let translation = try translated("""
            internal: 127.0.0.1 port = 1080
            external: 192.0.2.10
            socksmethod: username rfc931
            user.unprivileged: nobody
            client pass { from: 10.0.0.0/8 to: 0/0 }
            socks block { from: 0/0 to: .tracker.example }
            socks pass { from: 10.1.0.0/16 to: 0/0 port gt 1023 command: connect udpassociate }
            socks pass { from: 0/0 to: 0/0 port = ssh user: alice }
            socks pass { from: 0/0 to: 0/0 port 8000 - 8080 socksmethod: rfc931 }
            """)
        #expect(translation.runArguments.prefix(6) == ["--listen", "127.0.0.1:1080", "--external", "192.0.2.10", "--user", "nobody"])
        #expect(translation.runArguments.contains("--methods") && translation.runArguments.contains("password,none"))
        let policy = translation.policy
        #expect(policy.contains("ident from any timeout 10s"))
        #expect(policy.contains("deny to .tracker.example label \"sockd.conf:6\""))
        #expect(policy.contains("allow connect, udp from 10.1.0.0/16 port 1024-65535 label \"sockd.conf:7\""))
        // `user:` is an authenticated name in Dante: one rule per method that gives one.
        #expect(policy.contains("allow from 10.0.0.0/8 port 22 user alice auth password label \"sockd.conf:8\""))
        #expect(policy.contains("allow from 10.0.0.0/8 port 22 user alice auth none ident label \"sockd.conf:8\""))
        #expect(policy.contains("allow from 10.0.0.0/8 port 8000-8080 auth none ident label \"sockd.conf:9\""))
        #expect(translation.warnings.contains { $0.hasPrefix("sockd.conf:9: warning: rfc931") })
        let compiled = PolicyCompiler.compile(policy, file: "imported.policy")
        #expect(compiled.errors.isEmpty, "\(compiled.errors)\n\(policy)")
    }

    @Test func clientRulesBlockFirstAndNothingIsDroppedSilently() throws {
        let translation = try translated("""
            client block { from: 10.9.0.0/16 to: 0/0 }
            client pass { from: 10.0.0.0/8 to: 0/0 }
            socks pass { from: 0/0 to: 0/0 bandwidth: 1000 session.max: 50 }
            """)
        #expect(translation.policy.contains("allow from 10.0.0.0/9, 10.128.0.0/9") == false)
        let compiled = PolicyCompiler.compile(translation.policy, file: "imported.policy")
        #expect(compiled.errors.isEmpty, "\(compiled.errors)\n\(translation.policy)")
        #expect(translation.warnings.contains("sockd.conf:3: warning: bandwidth: not translated"))
        #expect(translation.policy.contains("limit sessions 50 total"))
        // 10.9.0.0/16 blocked, the rest of 10/8 passed, everyone else blocked.
        let engine = PolicyEngine(policy: try #require(compiled.policy))
        for (client, allowed) in [("10.9.1.1", false), ("10.1.2.3", true), ("192.0.2.1", false)] {
            let facts = RequestFacts(
                version: .socks5, command: .connect, client: RequestText.client(client)!, listener: RequestText.client("127.0.0.1:1080")!,
                destination: .address(.v4(.loopback)), destinationPort: 80)
            #expect(engine.decideImmediately(facts)?.verdict == (allowed ? .allow : .deny), "\(client)")
        }
    }
}
