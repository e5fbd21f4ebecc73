import AccessPolicy
import AuditLog
import Logging
import NIOCore
import NIOPosix
import NetAddress

/// Everything `identgate run` serves, wired, started, reloaded and stopped as one: the
/// event loops, the thread pool, the ident client, the swappable policy, the SOCKS
/// listeners, the metrics endpoint, and the lifecycle records and metrics around them.
///
/// The command line keeps what only it can do (options, binding as root, the privilege
/// drop, signals, reading policy files) and hands this a policy whose tests passed and
/// sockets already bound; tests start it on port 0 the same way.
public final class GatewayService: Sendable {
    public struct Settings: Sendable {
        public var configuration: GatewayConfiguration
        public var eventLoops: Int
        /// Where identd listens on clients' hosts (113; tests use their own).
        public var identPort: Int
        /// The policy's file name, as records and metrics name it.
        public var policyFile: String
        /// `identgate --version`, for the gateway-start record.
        public var version: String
        /// How long a directory's answer about a user's groups is kept (`--directory-cache`).
        public var directoryCacheTTL: TimeAmount = .minutes(5)

        public init(configuration: GatewayConfiguration, eventLoops: Int, identPort: Int = 113, policyFile: String, version: String) {
            self.configuration = configuration
            self.eventLoops = eventLoops
            self.identPort = identPort
            self.policyFile = policyFile
            self.version = version
        }
    }

    /// The metrics endpoint's address, and its socket if bound already (before the drop).
    public struct MetricsListener: Sendable {
        public var endpoint: IPEndpoint
        public var descriptor: Int32?

        public init(endpoint: IPEndpoint, descriptor: Int32? = nil) {
            self.endpoint = endpoint
            self.descriptor = descriptor
        }
    }

    private let settings: Settings
    private let group: MultiThreadedEventLoopGroup
    private let threadPool: NIOThreadPool
    private let policyStore: PolicyStore
    /// NSS lookups get threads of their own: a directory that hangs must not hold up
    /// password checks or name lookups.
    private let directoryPool: NIOThreadPool
    private let audit: AuditWriter?
    private let metrics: GatewayMetrics?
    private let logger: Logger
    private let metricsEndpoint: MetricsEndpoint?
    /// The SOCKS side, for what the metrics endpoint and tests read from it.
    public let gateway: GatewayServer

    public init(
        settings: Settings, engine: PolicyEngine, policySHA256: String, credentials: (any PasswordVerifier)? = nil,
        gssAcceptor: GSSAcceptor? = nil, httpGSSAcceptor: GSSAcceptor? = nil, audit: AuditWriter? = nil, metrics: GatewayMetrics? = nil, logger: Logger
    ) {
        self.settings = settings
        self.audit = audit
        self.metrics = metrics
        self.logger = logger
        let group = MultiThreadedEventLoopGroup(numberOfThreads: settings.eventLoops)
        self.group = group
        let identClient = IdentClient(group: group, port: settings.identPort, logger: logger, metrics: metrics)
        let directoryPool = NIOThreadPool(numberOfThreads: 4)
        directoryPool.start()
        self.directoryPool = directoryPool
        let directory = DirectoryGroups(threadPool: directoryPool, ttl: settings.directoryCacheTTL, metrics: metrics)
        self.policyStore = PolicyStore(
            engine, sha256: policySHA256, identLookup: identClient.lookup, groupLookup: directory.lookup,
            cachedGroups: directory.cached)
        let threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        self.threadPool = threadPool
        let gateway = GatewayServer(
            configuration: settings.configuration, policy: policyStore, credentials: credentials, group: group,
            threadPool: threadPool, logger: logger, audit: audit, gssAcceptor: gssAcceptor, httpGSSAcceptor: httpGSSAcceptor, metrics: metrics)
        self.gateway = gateway
        self.metricsEndpoint = metrics.map { MetricsEndpoint(metrics: $0, gateway: gateway) }
        metrics?.policyLoaded(sha256: policySHA256, file: settings.policyFile)
    }

    /// The addresses served on (port 0 made real).
    public struct Listening: Sendable {
        public var socks: [IPEndpoint]
        public var metrics: IPEndpoint?
    }

    /// Listens (on `descriptors` if bound already, one array per `--listen` address, one
    /// socket per event loop), serves metrics on `metricsListener` if there is an
    /// endpoint, records the start and reports ready. If anything cannot be started, everything is stopped (threads too: do not call
    /// `stop` then) and the error thrown.
    ///
    /// `accepting` false (a successor's): the SOCKS listeners are set up but accept nothing,
    /// and the metrics endpoint is not started, until `startAccepting`.
    public func start(
        adopting descriptors: [[Int32]]? = nil, metricsListener: MetricsListener? = nil, accepting: Bool = true
    ) async throws -> Listening {
        let bound: [IPEndpoint]
        var metricsServed: IPEndpoint?
        do {
            bound = try await gateway.start(adopting: descriptors, accepting: accepting)
            if accepting, let metricsEndpoint, let metricsListener {
                let served = try await metricsEndpoint.start(
                    metricsListener.endpoint, adopting: metricsListener.descriptor, group: group)
                logger.info("metrics served", metadata: ["listen": "\(served)", "paths": "/metrics /healthz"])
                metricsServed = served
            }
        } catch {
            _ = try? await stopServing(grace: .zero)
            try? await group.shutdownGracefully()
            try? await threadPool.shutdownGracefully()
            // Not awaited: a lookup stuck in NSS must not hold up the exit.
            directoryPool.shutdownGracefully { _ in }
            throw error
        }
        for (line, parent) in policyStore.engine.policy.routesToItself(listening: bound) {
            logger.warning("the rule on line \(line) routes through this gateway itself (\(parent)): a loop")
        }
        audit?.record(
            .gatewayStart(
                version: settings.version, listen: bound.map(\.description), policyFile: settings.policyFile,
                policySHA256: policyStore.sha256 ?? ""))
        logger.info(
            "identgate serving",
            metadata: [
                "listen": "\(bound.map(\.description).joined(separator: " "))",
                "policy": "\(settings.policyFile)",
                "methods": "\(gateway.offeredMethods.map(\.name).joined(separator: ","))",
                "driver": "\(gateway.connectionDriver.rawValue)\(busyPollNote)",
            ]
        )
        // Ready only now: bound, privileges dropped and verified, policy loaded.
        metrics?.markReady()
        return Listening(socks: bound, metrics: metricsServed)
    }

    /// ", busy-poll 20us" when the direct loops poll before sleeping.
    private var busyPollNote: String {
        let nanoseconds = settings.configuration.busyPoll.nanoseconds
        guard gateway.connectionDriver == .direct, nanoseconds > 0 else { return "" }
        return ", busy-poll \(nanoseconds / 1_000)us"
    }

    /// Puts a new policy (its tests passed) in force for every decision from now on;
    /// decisions under way finish on the one they started with. The names the resolver
    /// keeps are dropped too: an operator who changed /etc/hosts or DNS reloads to have it
    /// count at once rather than within `--resolve-cache`.
    public func replacePolicy(with engine: PolicyEngine, sha256: String, file: String, testsPassed: Int) {
        policyStore.replace(with: engine, sha256: sha256)
        gateway.resolver.forgetKeptNames()
        metrics?.policyReloaded(applied: true)
        metrics?.policyLoaded(sha256: sha256, file: file)
        audit?.record(.policyReload(file: file, sha256: sha256, rules: engine.policy.rules.count, testsPassed: testsPassed))
        logger.info(
            "policy reloaded", metadata: ["file": "\(file)", "rules": "\(engine.policy.rules.count)", "tests": "\(testsPassed) passed"])
    }

    /// A reload that did not happen: the policy in force stays, and the reason is on record.
    public func rejectPolicy(file: String, reason: String) {
        metrics?.policyReloaded(applied: false)
        logger.error("policy reload rejected; the previous policy stays in force", metadata: ["reason": "\(reason)"])
        audit?.record(.policyReloadRejected(file: file, reason: reason))
    }

    /// The engine deciding now.
    public var engine: PolicyEngine { policyStore.engine }

    /// The session number the next request would get: a successor numbers its own past it.
    public var upcomingSessionID: UInt64 { gateway.upcomingSessionID }

    /// After `start(accepting: false)`: accept on the SOCKS listeners, and serve metrics.
    public func startAccepting(metricsListener: MetricsListener?) async throws {
        await gateway.startAccepting()
        if let metricsEndpoint, let metricsListener {
            let served = try await metricsEndpoint.start(metricsListener.endpoint, adopting: metricsListener.descriptor, group: group)
            logger.info("metrics served", metadata: ["listen": "\(served)", "paths": "/metrics /healthz"])
        }
    }

    /// A successor accepts on the listeners now: this process stops accepting (SOCKS and
    /// metrics; closed when this returns), and every connection accepted here goes on.
    public func stopAccepting() async {
        await metricsEndpoint?.stop()
        await gateway.stopAccepting(draining: true)
    }

    /// Stops accepting (SOCKS and metrics), lets running sessions finish for at most
    /// `grace`, records the stop with `reason`, and stops the threads. Returns true if
    /// every session ended within the grace period.
    ///
    /// `draining`: a successor took the listeners over (docs/operations.md, "Seamless
    /// upgrade"): every connection accepted here is served to its end, sessions still
    /// negotiating too, for at most `grace` (the drain time-out).
    @discardableResult
    public func stop(grace: TimeAmount, reason: String, draining: Bool = false) async throws -> Bool {
        let inTime = try await stopServing(grace: grace, draining: draining)
        if !inTime { logger.notice("\(draining ? "drain time-out" : "grace period") over; closing the sessions still running") }
        audit?.record(.gatewayStop(reason: reason))
        try await group.shutdownGracefully()
        try await threadPool.shutdownGracefully()
        directoryPool.shutdownGracefully { _ in }
        return inTime
    }

    /// Ends a `stop`'s wait for running sessions now (SIGTERM while draining, say).
    public func endGracePeriod() {
        gateway.endGracePeriod()
    }

    private func stopServing(grace: TimeAmount, draining: Bool = false) async throws -> Bool {
        await metricsEndpoint?.stop()
        return try await draining ? gateway.drain(timeout: grace) : gateway.shutdown(grace: grace)
    }
}
