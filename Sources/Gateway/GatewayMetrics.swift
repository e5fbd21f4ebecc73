import AccessPolicy
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import SOCKSWire

/// What the gateway counts for Prometheus (`--metrics-listen`), in one registry that the
/// metrics endpoint renders (swift-prometheus writes the exposition format).
///
/// No label takes a value a client chooses (user names, destinations, USERIDs): labels are
/// fixed sets (command, version, verdict, reply code, outcome, failure kind, direction)
/// or come from the policy (a rule's or limit's label, else its line). The series count
/// is therefore bounded by the policies loaded since the start, and capped at
/// `policySeriesLimit` per metric whatever they are (further ones count as `other`).
///
/// The gateway holds an optional instance: with metrics off nothing is counted or timed.
/// Counts the gateway keeps anyway (BIND listeners, failed accepts, the audit writer's
/// state) are read when scraped (`refresh`), not on the request path.
public final class GatewayMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()

    /// Series per policy-labelled metric (decisions, limit refusals) at most.
    static let policySeriesLimit = 2000

    struct SessionKind: Hashable {
        var command: RequestFacts.Command
        var version: RequestFacts.Version
    }

    private struct DecisionKey: Hashable {
        var verdict: Decision.Verdict
        var reply: Int
        var rule: RuleReference?
        var timedOut: Bool
    }

    private let sessionsStarted: [SessionKind: Counter]
    private let sessionsOpen: [SessionKind: OpenSessions]
    private let decisions = NIOLockedValueBox<[DecisionKey: Counter]>([:])
    private let limitRefusals = NIOLockedValueBox<[RuleReference: Counter]>([:])
    private let decisionDuration: DurationHistogram
    private let identLookups: [String: Counter]
    private let identDuration: DurationHistogram
    private let directoryLookups: [DirectoryLookupOutcome: Counter]
    private let directoryDuration: DurationHistogram
    private let nameLookups: [NameLookupOutcome: Counter]
    private let nameLookupDuration: DurationHistogram
    private let connectDuration: DurationHistogram
    private let connectFailures: [String: Counter]
    /// TCP relays (CONNECT, BIND) and UDP payloads, each way.
    let tcpFromClients: Counter
    let tcpToClients: Counter
    private let udpFromClients: Counter
    private let udpToClients: Counter
    private let udpAssociationsOpen: Gauge
    private let bindListenersOpen: Gauge
    private let acceptsFailed: Counter
    private let repeatedEvents: [RepeatedEvent: Counter]
    private let auditQueueDepth: Gauge
    private let auditWriteFailures: Counter
    private let auditFailClosed: Gauge
    private let policyReloads: [Bool: Counter]
    private let policyInForce = NIOLockedValueBox<Gauge?>(nil)
    /// Totals already added to the counters that `refresh` brings up to date.
    private let refreshed = NIOLockedValueBox((acceptsFailed: 0, auditWriteFailures: 0))
    private let ready = NIOLockedValueBox(false)
    /// Sessions open here, all kinds (a draining process reports it to its successor).
    let openSessionCount: NIOLockedValueBox<Int>
    /// After a takeover, in the process that drains: why `/healthz` says "draining".
    let drainingNote = NIOLockedValueBox<String?>(nil)
    /// Sessions still running in the processes this one took over, as last reported.
    let drainingSessions: Gauge

    private static let fastBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
    ]
    private static let networkBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        .seconds(30),
    ]

    /// The ident outcomes (`IdentAnswer`): a user-id or one of the failure kinds.
    static let identOutcomes = ["user-id"] + IdentFailure.allCases.map(\.rawValue)

    public init(version: String, commit: String) {
        let registry = self.registry
        func name(_ name: String, _ unit: String = "", _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "identgate", metricName: name, unitName: unit, helpText: help)
        }
        /// One series of `descriptor` per key, its `label` set to the key's value: a fixed set.
        func counters<Key: Hashable>(_ descriptor: MetricNameDescriptor, _ label: String, _ keys: [Key], value: (Key) -> String)
            -> [Key: Counter]
        {
            Dictionary(
                uniqueKeysWithValues: keys.map { ($0, registry.makeCounter(descriptor: descriptor, labels: [(label, value($0))])) })
        }
        registry.makeGauge(
            descriptor: name("build", "info", "The running identgate's version and commit; always 1."),
            labels: [("version", version), ("commit", commit)]
        ).set(to: 1)
        var started: [SessionKind: Counter] = [:]
        var open: [SessionKind: OpenSessions] = [:]
        let openSessionCount = NIOLockedValueBox(0)
        self.openSessionCount = openSessionCount
        let sessionsStarted = name("sessions_started", "total", "Requests handed to a session (after negotiation), by command and client protocol.")
        let sessionsOpen = name("sessions_open", "", "Sessions whose client is still connected, by command and client protocol.")
        for command in RequestFacts.Command.allCases {
            for version in RequestFacts.Version.allCases where version != .http || command == .connect {
                let labels = [("command", command.rawValue), ("version", version.rawValue)]
                started[SessionKind(command: command, version: version)] = registry.makeCounter(descriptor: sessionsStarted, labels: labels)
                open[SessionKind(command: command, version: version)] = OpenSessions(
                    gauge: registry.makeGauge(descriptor: sessionsOpen, labels: labels), total: openSessionCount)
            }
        }
        self.sessionsStarted = started
        self.sessionsOpen = open
        decisionDuration = registry.makeDurationHistogram(
            descriptor: name("decision_duration", "seconds", "From a request's facts to the policy's decision, ident lookup included."),
            buckets: Self.fastBuckets)
        identLookups = counters(name("ident_lookups", "total", "RFC 1413 lookups, by outcome."), "outcome", Self.identOutcomes) { $0 }
        identDuration = registry.makeDurationHistogram(
            descriptor: name("ident_lookup_duration", "seconds", "How long RFC 1413 lookups took, whatever their outcome."),
            buckets: Self.networkBuckets)
        directoryLookups = counters(
            name("directory_lookups", "total", "Group lookups for `group` rules, by outcome (cache hits included)."), "outcome",
            DirectoryLookupOutcome.allCases, value: \.rawValue)
        directoryDuration = registry.makeDurationHistogram(
            descriptor: name("directory_lookup_duration", "seconds", "How long group lookups (NSS) took, cache misses only."),
            buckets: Self.networkBuckets)
        nameLookups = counters(
            name("name_lookups", "total", "Destination names looked up (getaddrinfo) or found kept (--resolve-cache), by outcome."),
            "outcome", NameLookupOutcome.allCases, value: \.rawValue)
        nameLookupDuration = registry.makeDurationHistogram(
            descriptor: name(
                "name_lookup_duration", "seconds", "How long getaddrinfo took for destination names, kept answers not counted."),
            buckets: Self.networkBuckets)
        connectDuration = registry.makeDurationHistogram(
            descriptor: name("connect_duration", "seconds", "Successful outbound connects (to the destination or through the parents)."),
            buckets: Self.networkBuckets)
        connectFailures = counters(
            name("connect_failures", "total", "Outbound connects that failed, by kind."), "kind", ConnectFailureKind.all) { $0 }
        let relayed = name("relayed_bytes", "total", "Payload bytes relayed, by transport and direction.")
        tcpFromClients = registry.makeCounter(descriptor: relayed, labels: [("transport", "tcp"), ("direction", "from_client")])
        tcpToClients = registry.makeCounter(descriptor: relayed, labels: [("transport", "tcp"), ("direction", "to_client")])
        udpFromClients = registry.makeCounter(descriptor: relayed, labels: [("transport", "udp"), ("direction", "from_client")])
        udpToClients = registry.makeCounter(descriptor: relayed, labels: [("transport", "udp"), ("direction", "to_client")])
        udpAssociationsOpen = registry.makeGauge(descriptor: name("udp_associations_open", "", "UDP associations with a relay socket open."))
        bindListenersOpen = registry.makeGauge(descriptor: name("bind_listeners_open", "", "BIND listening sockets open."))
        acceptsFailed = registry.makeCounter(
            descriptor: name("accepts_failed", "total", "Connections the kernel could not hand over (descriptor or memory limits)."))
        repeatedEvents = counters(
            name("peer_events", "total", "Events a peer can repeat at will, each counted (logged once per episode), by kind."), "event",
            RepeatedEvent.allCases, value: \.rawValue)
        auditQueueDepth = registry.makeGauge(descriptor: name("audit_queue_depth", "", "Audit records queued or being written."))
        auditWriteFailures = registry.makeCounter(
            descriptor: name("audit_write_failures", "total", "Times writing the audit log failed (each starts a gap record)."))
        auditFailClosed = registry.makeGauge(
            descriptor: name("audit_fail_closed", "", "1 while new requests are refused because the audit log cannot keep up or be written."))
        drainingSessions = registry.makeGauge(
            descriptor: name(
                "draining_sessions", "",
                "Sessions still running in the older processes this one took the listeners from (seamless upgrade), as they report them; in a draining process, its own."))
        let reloads = name("policy_reloads", "total", "SIGHUP policy reloads, by result (applied, rejected).")
        policyReloads = [
            true: registry.makeCounter(descriptor: reloads, labels: [("result", "applied")]),
            false: registry.makeCounter(descriptor: reloads, labels: [("result", "rejected")]),
        ]
    }

    private static var decisionsName: MetricNameDescriptor {
        MetricNameDescriptor(
        namespace: "identgate", metricName: "decisions", unitName: "total",
        helpText: "Decisions, by verdict, SOCKS reply code and deciding rule (its label, else its line).")
    }
    private static var limitRefusalsName: MetricNameDescriptor {
        MetricNameDescriptor(
        namespace: "identgate", metricName: "limit_refusals", unitName: "total",
        helpText: "Requests refused by a limit line, by limit (its label, else its line).")
    }
    private static var policyName: MetricNameDescriptor {
        MetricNameDescriptor(
        namespace: "identgate", metricName: "policy", unitName: "info",
        helpText: "The policy in force: the SHA-256 of its text, and its file; always 1.")
    }

    // MARK: Sessions

    /// A request was handed to its session; it stays open until `closed` completes.
    func sessionStarted(_ command: RequestFacts.Command, _ version: RequestFacts.Version, closed: EventLoopFuture<Void>) {
        guard let open = sessionOpened(command, version) else { return }
        // One reference captured: the closure needs no context of its own.
        closed.whenComplete { _ in open.closed() }
    }

    /// A session started; the caller calls `closed()` on the result when its client's
    /// connection closes (the direct driver, which has no close future).
    func sessionOpened(_ command: RequestFacts.Command, _ version: RequestFacts.Version) -> OpenSessions? {
        let kind = SessionKind(command: command, version: version)
        sessionsStarted[kind]?.increment()
        guard let open = sessionsOpen[kind] else { return nil }
        open.opened()
        return open
    }

    func repeatedEvent(_ event: RepeatedEvent) { repeatedEvents[event]?.increment() }

    func udpAssociationOpened() { udpAssociationsOpen.increment() }
    func udpAssociationClosed() { udpAssociationsOpen.decrement() }

    func udpRelayed(fromClient bytes: Int) { udpFromClients.increment(by: Int64(bytes)) }
    func udpRelayed(toClient bytes: Int) { udpToClients.increment(by: Int64(bytes)) }

    // MARK: Decisions

    /// A decision made (`timedOut`: none was, in time; the request was refused), and how
    /// long it took (nil: no rule decided it, as for a UDP association a limit refused).
    func decided(_ decision: Decision, reply: Int, after duration: Duration?, timedOut: Bool = false) {
        if let duration { decisionDuration.record(duration) }
        let key = DecisionKey(verdict: decision.verdict, reply: reply, rule: decision.rule, timedOut: timedOut)
        let counter = decisions.withLockedValue { counters in
            if let counter = counters[key] { return counter }
            // Past the cap, further rules share one series (and are not remembered).
            let full = counters.count >= Self.policySeriesLimit
            let rule = timedOut ? "timed out" : full ? "other" : Self.name(of: decision.rule, absent: "final deny")
            let counter = registry.makeCounter(
                descriptor: Self.decisionsName,
                labels: [("verdict", decision.verdict.rawValue), ("reply", String(reply)), ("rule", rule)])
            if !full { counters[key] = counter }
            return counter
        }
        counter.increment()
        if let limit = decision.limit {
            let counter = limitRefusals.withLockedValue { counters in
                if let counter = counters[limit] { return counter }
                let full = counters.count >= Self.policySeriesLimit
                let counter = registry.makeCounter(
                    descriptor: Self.limitRefusalsName, labels: [("limit", full ? "other" : Self.name(of: limit, absent: "unnamed"))])
                if !full { counters[limit] = counter }
                return counter
            }
            counter.increment()
        }
    }

    /// A rule or limit as a label value: its label, else "line N".
    private static func name(of rule: RuleReference?, absent: String) -> String {
        guard let rule else { return absent }
        return rule.label ?? rule.line.map { "line \($0)" } ?? absent
    }

    // MARK: Ident and connects

    func identLookup(_ outcome: String, after duration: Duration) {
        identDuration.record(duration)
        identLookups[outcome]?.increment()
    }

    func directoryLookup(_ outcome: DirectoryLookupOutcome, after duration: Duration? = nil) {
        if let duration { directoryDuration.record(duration) }
        directoryLookups[outcome]?.increment()
    }

    func nameLookup(_ outcome: NameLookupOutcome, after duration: Duration? = nil) {
        if let duration { nameLookupDuration.record(duration) }
        nameLookups[outcome]?.increment()
    }

    func connected(after duration: Duration) {
        connectDuration.record(duration)
    }

    func connectFailed(_ failure: SOCKSRequestFailure) {
        connectFailures[ConnectFailureKind.name(failure)]?.increment()
    }

    // MARK: Policy, readiness and the scrape

    /// The policy in force now (at the start and after each applied reload).
    public func policyLoaded(sha256: String, file: String) {
        let gauge = registry.makeGauge(descriptor: Self.policyName, labels: [("sha256", sha256), ("file", file)])
        gauge.set(to: 1)
        let previous = policyInForce.withLockedValue { current in
            defer { current = gauge }
            return current
        }
        if let previous, previous !== gauge { registry.unregisterGauge(previous) }
    }

    public func policyReloaded(applied: Bool) {
        policyReloads[applied]?.increment()
    }

    /// Serving: bound, privileges dropped, policy loaded (`/healthz` answers 200 from now).
    public func markReady() { ready.withLockedValue { $0 = true } }

    var isReady: Bool { ready.withLockedValue { $0 } }

    /// Sessions open here right now.
    public var openSessions: Int { openSessionCount.withLockedValue { $0 } }

    /// In the process a successor took over: `/healthz` answers 503 with `note`, and the
    /// draining gauge counts this process's own sessions.
    public func markDraining(_ note: String) {
        drainingNote.withLockedValue { $0 = note }
    }

    /// Sessions the processes this one took over still run (their last reports, summed).
    public func setDrainingSessions(_ count: Int) {
        drainingSessions.set(to: Double(count))
    }

    /// Brings the counts read at scrape time up to date.
    func refresh(bindListeners: Int, acceptFailures: Int, audit: AuditWriter.Health?) {
        bindListenersOpen.set(to: Double(bindListeners))
        auditQueueDepth.set(to: Double(audit?.queued ?? 0))
        auditFailClosed.set(to: audit?.refusingRequests == true ? 1 : 0)
        let (newAccepts, newAuditFailures) = refreshed.withLockedValue { seen in
            defer { seen = (max(seen.acceptsFailed, acceptFailures), max(seen.auditWriteFailures, audit?.writeFailures ?? 0)) }
            return (max(0, acceptFailures - seen.acceptsFailed), max(0, (audit?.writeFailures ?? 0) - seen.auditWriteFailures))
        }
        if newAccepts > 0 { acceptsFailed.increment(by: Int64(newAccepts)) }
        if newAuditFailures > 0 { auditWriteFailures.increment(by: Int64(newAuditFailures)) }
    }
}

/// One kind's open-sessions gauge, and the count of all kinds (which a draining process
/// reports to its successor).
final class OpenSessions: Sendable {
    let gauge: Gauge
    let total: NIOLockedValueBox<Int>

    init(gauge: Gauge, total: NIOLockedValueBox<Int>) {
        self.gauge = gauge
        self.total = total
    }

    func opened() {
        gauge.increment()
        total.withLockedValue { $0 += 1 }
    }

    func closed() {
        gauge.decrement()
        total.withLockedValue { $0 -= 1 }
    }
}

/// `identgate_connect_failures_total`'s `kind` label: a fixed set.
enum ConnectFailureKind {
    static let all = [
        "refused", "host_unreachable", "network_unreachable", "timed_out", "not_allowed", "general",
    ]

    static func name(_ failure: SOCKSRequestFailure) -> String {
        switch failure {
        case .connectionRefused: "refused"
        case .hostUnreachable: "host_unreachable"
        case .networkUnreachable: "network_unreachable"
        case .timedOut: "timed_out"
        case .notAllowed, .identMismatch, .identUnreachable: "not_allowed"
        case .generalFailure, .commandNotSupported, .addressTypeNotSupported: "general"
        }
    }
}
