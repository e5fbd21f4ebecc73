import AccessPolicy
import NIOCore
import NetAddress
import NIOEmbedded
import NIOPosix
import SOCKSWire
import Testing

@testable import Gateway

/// `GatewayMetrics`: label values come from the policy, never from a client, and their
/// number is capped; counts read at scrape time only ever add what is new.
@Suite struct MetricsTests {
    func exposition(_ metrics: GatewayMetrics) -> String {
        String(decoding: metrics.registry.emitToBuffer(), as: UTF8.self)
    }

    @Test func decisionsAreLabelledByTheirRuleAndCapped() {
        let metrics = GatewayMetrics(version: "1.2.3", commit: "abc")
        let labelled = Decision(.allow(route: nil), rule: RuleReference(line: 4, label: "web \"proxy\""), trace: [])
        let unlabelled = Decision(.deny(.notAllowed), rule: RuleReference(line: 9), trace: [])
        let finalDeny = Decision(.deny(.notAllowed), rule: nil, trace: [])
        metrics.decided(labelled, reply: 0, after: .microseconds(10))
        metrics.decided(labelled, reply: 0, after: .microseconds(10))
        metrics.decided(unlabelled, reply: 91, after: .microseconds(10))
        metrics.decided(finalDeny, reply: 2, after: .microseconds(10))
        metrics.decided(finalDeny, reply: 1, after: .seconds(30), timedOut: true)
        let text = exposition(metrics)
        // The label is escaped by the exposition writer (a quote in a policy label).
        #expect(text.contains(#"identgate_decisions_total{verdict="allow",reply="0",rule="web \"proxy\""} 2"#))
        #expect(text.contains(#"identgate_decisions_total{verdict="deny",reply="91",rule="line 9"} 1"#))
        #expect(text.contains(#"identgate_decisions_total{verdict="deny",reply="2",rule="final deny"} 1"#))
        #expect(text.contains(#"identgate_decisions_total{verdict="deny",reply="1",rule="timed out"} 1"#))
        #expect(text.contains("identgate_decision_duration_seconds_count 5"))
        #expect(text.contains(#"identgate_build_info{version="1.2.3",commit="abc"} 1"#))

        // However many rules the policies loaded have, the series stop at the cap.
        for line in 0..<(GatewayMetrics.policySeriesLimit + 100) {
            metrics.decided(Decision(.allow(route: nil), rule: RuleReference(line: 1000 + line), trace: []), reply: 0, after: .zero)
        }
        let series = exposition(metrics).split(separator: "\n").filter { $0.hasPrefix("identgate_decisions_total{") }
        #expect(series.count <= GatewayMetrics.policySeriesLimit + 1)
        #expect(series.contains { $0.contains(#"rule="other""#) })
    }

    /// Destination names: looked up, found kept, not found, refused at the bound.
    @Test func nameLookupsAreCountedByOutcome() async throws {
        let metrics = GatewayMetrics(version: "1", commit: "c")
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let resolver = HostResolver(threadPool: pool, timeout: .seconds(5), cacheTTL: .hours(1), metrics: metrics) { name in
            name == "www.example" ? [IPAddress("192.0.2.7")!] : []
        }
        let loop = testGroup.next()
        for name in ["www.example", "www.example", "WWW.example", "nowhere.example"] {
            _ = try await resolver.resolve(name, on: loop).get()
        }
        let text = exposition(metrics)
        #expect(text.contains(#"identgate_name_lookups_total{outcome="resolved"} 1"#))
        #expect(text.contains(#"identgate_name_lookups_total{outcome="kept"} 2"#))
        #expect(text.contains(#"identgate_name_lookups_total{outcome="unresolved"} 1"#))
        #expect(text.contains(#"identgate_name_lookups_total{outcome="refused"} 0"#))
        #expect(text.contains("identgate_name_lookup_duration_seconds_count 2"))
        try await pool.shutdownGracefully()
    }

    @Test func limitRefusalsNameTheLimit() {
        let metrics = GatewayMetrics(version: "1", commit: "c")
        let limit = SessionLimit(.sessions(2), .client, reference: RuleReference(line: 7, label: "two each"))
        let refused = Decision(.allow(route: nil), rule: RuleReference(line: 2), trace: [])
            .refused(by: LimitRefusal(limit: limit, subject: .client(IPAddress("10.0.0.1")!)))
        metrics.decided(refused, reply: 2, after: .zero)
        #expect(exposition(metrics).contains(#"identgate_limit_refusals_total{limit="two each"} 1"#))
    }

    @Test func scrapeTimeCountsOnlyAddWhatIsNew() {
        let metrics = GatewayMetrics(version: "1", commit: "c")
        let failing = AuditWriter.Health(queued: 7, writeFailures: 2, refusingRequests: true, failure: "disk full")
        metrics.refresh(bindListeners: 3, acceptFailures: 5, audit: failing)
        metrics.refresh(bindListeners: 1, acceptFailures: 5, audit: failing)
        metrics.refresh(bindListeners: 1, acceptFailures: 6, audit: AuditWriter.Health(queued: 0, writeFailures: 2, refusingRequests: false))
        let text = exposition(metrics)
        #expect(text.contains("identgate_accepts_failed_total 6"))
        #expect(text.contains("identgate_audit_write_failures_total 2"))
        #expect(text.contains("identgate_bind_listeners_open 1.0"))
        #expect(text.contains("identgate_audit_queue_depth 0.0"))
        #expect(text.contains("identgate_audit_fail_closed 0.0"))
    }

    @Test func onlyThePolicyInForceIsInfo() {
        let metrics = GatewayMetrics(version: "1", commit: "c")
        metrics.policyLoaded(sha256: "aaa", file: "/etc/identgate/a.policy")
        metrics.policyLoaded(sha256: "bbb", file: "/etc/identgate/a.policy")
        metrics.policyReloaded(applied: true)
        let text = exposition(metrics)
        #expect(!text.contains(#"sha256="aaa""#))
        #expect(text.contains(#"identgate_policy_info{sha256="bbb",file="/etc/identgate/a.policy"} 1"#))
        #expect(text.contains(#"identgate_policy_reloads_total{result="applied"} 1"#))
    }

    @Test func openSessionsEndWithTheirClient() throws {
        let metrics = GatewayMetrics(version: "1", commit: "c")
        let loop = EmbeddedEventLoop()
        let closed = loop.makePromise(of: Void.self)
        metrics.sessionStarted(.connect, .socks4a, closed: closed.futureResult)
        #expect(exposition(metrics).contains(#"identgate_sessions_open{command="connect",version="socks4a"} 1.0"#))
        closed.succeed(())
        #expect(exposition(metrics).contains(#"identgate_sessions_open{command="connect",version="socks4a"} 0.0"#))
        #expect(exposition(metrics).contains(#"identgate_sessions_started_total{command="connect",version="socks4a"} 1"#))
    }
}
