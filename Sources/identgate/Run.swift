import AccessPolicy
import ArgumentParser
import AuditLog
import CBuildInfo
import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix
import NetAddress
import OfflineCommands
import PolicyFiles
import Privileges
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve SOCKS on the listen addresses until SIGINT or SIGTERM.",
        discussion: """
            With no options: 127.0.0.1:1080, the embedded default policy (clients on \
            loopback may connect anywhere; everyone else is denied).
            Durations take a unit: 500ms, 30s, 2m, 1h; a bare number is seconds.
            """
    )

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "Address to serve on, HOST:PORT; [::1]:1080 for IPv6. Repeatable. Default: 127.0.0.1:1080.", valueName: "host:port"))
    var listen: [ListenAddress] = []

    @Option(
        help: ArgumentHelp(
            "Longest wait from accept to a complete request; also each policy decision's deadline.", valueName: "duration"))
    var negotiateTimeout: DurationArgument = "30s"

    @Option(
        help: ArgumentHelp("Longest wait for resolving a destination name, and for the outbound connect.", valueName: "duration"))
    var connectTimeout: DurationArgument = "30s"

    @Option(help: ArgumentHelp("Close a relay after this long with no bytes either way; 0 for never.", valueName: "duration"))
    var idleTimeout: DurationArgument = "1h"

    @Option(help: ArgumentHelp("On SIGINT/SIGTERM, how long running sessions may go on before exit.", valueName: "duration"))
    var shutdownGrace: DurationArgument = "10s"

    @Option(help: ArgumentHelp("BIND: how long to wait for the inbound connection.", valueName: "duration"))
    var bindTimeout: DurationArgument = "2m"

    @Option(
        help: ArgumentHelp(
            "The policy file; SIGHUP re-reads, checks and tests it. Default: the embedded policies/default.policy.",
            valueName: "file"))
    var policy: String?

    @Option(
        help: ArgumentHelp("Users for SOCKS5 username/password, 'user:hash' lines (see 'identgate passwd').", valueName: "file"))
    var passwordFile: String?

    @Option(
        help: ArgumentHelp(
            "SOCKS5 methods to offer, preferred first: none, password, gssapi. Default: gssapi with --gssapi-keytab, "
                + "then password with --password-file, else none.",
            valueName: "list"))
    var methods: String?

    @Option(
        help: ArgumentHelp(
            "A Kerberos keytab: offer GSS-API (RFC 1961). Read once, as root, before the privilege drop.", valueName: "file"))
    var gssapiKeytab: String?

    @Option(help: ArgumentHelp("The GSS-API service: the keytab's keys for SERVICE/host@REALM are used.", valueName: "name"))
    var gssapiService: String = "rcmd"

    @Option(
        help: ArgumentHelp(
            "Where outbound traffic leaves from (CONNECT, BIND listeners, UDP relays): an address of this host or an "
                + "interface; repeatable; the first of the destination's family is used. Default: the kernel chooses.",
            valueName: "addr|iface"))
    var external: [String] = []

    @Option(
        help: ArgumentHelp(
            "The audit log (JSON lines, hash-chained); - for standard output; off for none (benchmarks).", valueName: "file"))
    var auditLog: String = "identgate-audit.jsonl"

    @Option(
        help: ArgumentHelp(
            "An Ed25519 private key (audit keygen): sign a checkpoint every 1,000 records or 60 s, and at exit. "
                + "Read once, as root, before the privilege drop.",
            valueName: "file"))
    var auditSigningKey: String?

    @Option(help: "When to fsync the audit log: always (every batch), batch (at most once a second), none (at exit only).")
    var auditSync: AuditWriter.SyncPolicy = .batch

    @Option(help: "If the audit log cannot be written: closed (refuse new requests) or open (go on without it).")
    var auditFail: AuditFailMode = .closed

    @Option(help: ArgumentHelp("As root: after binding, run as this user, with no capabilities.", valueName: "name"))
    var user: String?

    @Option(help: ArgumentHelp("With --user: run with this group and no supplementary groups.", valueName: "name"))
    var group: String?

    @Flag(help: "Keep running as root (not recommended): without it, root must name --user.")
    var stayRoot = false

    @Option(help: ArgumentHelp("The identd port on clients (RFC 1413: 113). For tests.", visibility: .hidden))
    var identPort: Int = 113

    @Option(
        name: .customLong("metrics-listen"),
        help: ArgumentHelp(
            "Serve Prometheus metrics (/metrics) and a health check (/healthz) over HTTP on HOST:PORT. Default: off.",
            valueName: "host:port"))
    var metricsListen: ListenAddress?

    @Option(
        help: ArgumentHelp(
            "A load balancer's network (repeatable): connections from it must start with a PROXY protocol header "
                + "(v1 or v2) naming the real client; from anywhere else one is refused.",
            valueName: "cidr"))
    var proxyProtocolFrom: [String] = []

    @Option(
        help: ArgumentHelp(
            "This gateway's name in a fleet, written into every audit record. Default: the host name.", valueName: "name"))
    var instance: String?

    @Option(help: "How much to log on standard error.")
    var logLevel = LogLevelArgument(.info)

    enum LogFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    @Option(help: "text (a line per event), or json (an object per line, for log shippers).")
    var logFormat: LogFormat = .text

    func validate() throws {
        guard (1...65535).contains(identPort) else { throw ValidationError("--ident-port: \(identPort) is not a port (1-65535)") }
        if passwordFile == nil, parsedMethods.contains(.usernamePassword) {
            throw ValidationError("--methods password needs --password-file")
        }
        if let metrics = metricsListen?.endpoint, listen.contains(where: { $0.endpoint == metrics }) {
            throw ValidationError("--metrics-listen \(metrics) is also a --listen address: the metrics need a port of their own")
        }
    }

    private var parsedMethods: [SOCKS5AuthMethod] {
        (methods ?? "").split(separator: ",").compactMap { name in
            switch name.filter({ $0 != " " }) {
            case "none": .noAuthentication
            case "password": .usernamePassword
            case "gssapi": .gssapi
            default: nil
            }
        }
    }

    /// Everything that needs root happens here, synchronously, before any other thread
    /// exists: the policy is compiled, the sockets are bound, then privileges are dropped
    /// and verified. Only then do the threads of SwiftNIO and Swift concurrency start.
    func run() throws {
        let level = logLevel.level
        let json = logFormat == .json
        LoggingSystem.bootstrap { label in
            if json {
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "identgate")

        if let methods, parsedMethods.count != methods.split(separator: ",").count {
            throw ValidationError("--methods: unknown method in '\(methods)'; use none, password, gssapi")
        }
        if parsedMethods.contains(.gssapi), gssapiKeytab == nil {
            throw ValidationError("--methods gssapi needs --gssapi-keytab")
        }
        if parsedMethods.contains(.usernamePassword), passwordFile == nil {
            throw ValidationError("--methods password needs --password-file")
        }
        var configuration = GatewayConfiguration()
        if !listen.isEmpty { configuration.listen = listen.map(\.endpoint) }
        configuration.negotiationTimeout = negotiateTimeout.amount
        configuration.bindTimeout = bindTimeout.amount
        configuration.connectTimeout = connectTimeout.amount
        configuration.idleTimeout = idleTimeout.amount == .zero ? nil : idleTimeout.amount
        configuration.methods = parsedMethods
        configuration.proxyProtocolFrom = try proxyProtocolFrom.map { text in
            guard let network = IPNetwork(text) else { throw ValidationError("--proxy-protocol-from: '\(text)' is not a network") }
            return network
        }
        do {
            configuration.external = try external.flatMap(GatewayConfiguration.externalAddresses)
        } catch {
            throw FailedStart(message: "\(error)")
        }

        let credentials: CredentialStore?
        let policyFile: PolicyFile
        let gssAcceptor: GSSAcceptor?
        let signingKey: AuditSigningKey?
        do {
            signingKey = try auditSigningKey.map(AuditSigningKey.init(contentsOfFile:))
            credentials = try passwordFile.map(CredentialStore.init(contentsOfFile:))
            // Keys are copied into memory here, while still root: a keytab is root's.
            gssAcceptor = try gssapiKeytab.map { try GSSAcceptor(keytab: $0, service: gssapiService) }
            policyFile = try policy.map(PolicyFile.read) ?? .embeddedDefault
        } catch {
            throw FailedStart(message: "\(error)")
        }
        if let problem = compileProblem(policyFile.compilation) { throw FailedStart(message: problem) }
        guard let compiled = policyFile.compilation.policy else { throw FailedStart(message: "\(policyFile.path) did not compile") }
        for warning in policyFile.compilation.warnings { logger.warning("\(warning)") }
        if !configuration.proxyProtocolFrom.isEmpty {
            for scope in compiled.identScopes {
                logger.warning(
                    "\(policy ?? DefaultPolicy.fileName):\(scope.line ?? 0): \(Policy.identBehindBalancerWarning(configuration.proxyProtocolFrom))")
            }
        }

        // Connected while still root: systemd's socket need not admit the dropped user.
        let notifier = ServiceNotifier()
        let identity = try privilegeTarget()
        let sockets: [[ListeningSocket]]
        let metricsSocket: ListeningSocket?
        do {
            sockets = try configuration.listen.map {
                try ListeningSocket.open($0, count: eventLoops)
            }
            metricsSocket = try metricsListen.map { try ListeningSocket.open($0.endpoint, backlog: 64) }
        } catch {
            throw FailedStart(message: "\(error)")
        }
        // The audit log is opened while still privileged, like the sockets, by its absolute
        // path, so that messages name it fully and SIGUSR1 reopens the same file.
        let auditPath = Self.absolute(auditLog)
        let audit: AuditWriter?
        do {
            audit =
                auditLog == "off"
                ? nil
                : try AuditWriter(
                    path: auditPath, sync: auditSync, failClosed: auditFail == .closed, instance: instance ?? Self.hostName,
                    signingKey: signingKey)
        } catch {
            throw FailedStart(message: "\(error)")
        }
        if audit == nil { logger.warning("--audit-log off: no audit log is written") }
        var dropped: PrivilegeReport?
        if let identity {
            do {
                dropped = try PrivilegeDrop.drop(to: identity)
            } catch {
                throw FailedStart(message: "\(error); not going on")
            }
            if audit != nil, auditPath != "-", !Self.directoryIsWritable(of: auditPath) {
                logger.warning(
                    "the audit log's directory is not writable by \(identity.userName): SIGUSR1 cannot reopen the log after rotation; make the directory writable by user \(identity.userName) or group \(identity.groupName)",
                    metadata: ["file": "\(auditPath)"])
            }
            if let policy, access(policy, R_OK) != 0 {
                throw FailedStart(
                    message: "the policy \(policy) is not readable by \(identity.userName): SIGHUP reloads would fail; "
                        + "make it readable by user \(identity.userName) or group \(identity.groupName)")
            }
        }
        let command = self
        let settings = configuration
        let verified = dropped
        let policySHA256 = policyFile.sha256
        let metrics = metricsSocket.map { socket in
            (GatewayMetrics(version: Identgate.version, commit: Identgate.commit), socket)
        }
        try waitFor {
            try await command.serve(
                configuration: settings, policy: compiled, policySHA256: policySHA256, credentials: credentials,
                gssAcceptor: gssAcceptor, descriptors: sockets.map { $0.map(\.descriptor) }, dropped: verified, audit: audit,
                metrics: metrics, notifier: notifier, logger: logger)
        }
    }

    /// The default `--instance`: this host's name.
    static var hostName: String {
        var name = [UInt8](repeating: 0, count: 256)
        let got = name.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                chars.baseAddress.map { gethostname($0, chars.count - 1) } ?? -1
            }
        }
        guard got == 0 else { return "unknown" }
        return String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// `path` from the working directory; `-` (standard output) and `off` as they are.
    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/"), path != "-", path != "off", let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }

    /// After the privilege drop: may this user create a file where `path` is (rotation)?
    static func directoryIsWritable(of path: String) -> Bool {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return access(directory.isEmpty ? "/" : directory, W_OK | X_OK) == 0
    }

    /// One event loop per core; each listen address has one listening socket per loop.
    private var eventLoops: Int { System.coreCount }

    /// The user to become, or nil to stay as we are; refuses root without `--user`.
    private func privilegeTarget() throws -> TargetIdentity? {
        let root = geteuid() == 0
        guard let user else {
            if root, !stayRoot {
                throw FailedStart(
                    message: "running as root: pass --user NAME to drop to an unprivileged user after binding "
                        + "(or --stay-root to keep root, which is not recommended)")
            }
            return nil
        }
        guard root else { throw FailedStart(message: "--user needs root (started as uid \(geteuid()))") }
        do {
            return try TargetIdentity.lookUp(user: user, group: group)
        } catch {
            throw FailedStart(message: "\(error)")
        }
    }

    private func serve(
        configuration: GatewayConfiguration, policy compiled: Policy, policySHA256: String, credentials: CredentialStore?,
        gssAcceptor: GSSAcceptor?, descriptors: [[Int32]], dropped: PrivilegeReport?, audit: AuditWriter?,
        metrics metricsSetup: (GatewayMetrics, ListeningSocket)?, notifier: ServiceNotifier, logger: Logger
    ) async throws {
        let metrics = metricsSetup?.0
        audit?.start()
        defer { audit?.shutdown() }
        var privileges = AuditRecord(event: .privileges)
        if let dropped {
            logger.info("privileges dropped", metadata: ["user": "\(dropped.identity)", "verified": "\(dropped)"])
            privileges.user = dropped.identity.description
            privileges.verified = dropped.description
        } else {
            privileges.user = "uid \(geteuid())"
            privileges.verified = geteuid() == 0 ? "kept root (--stay-root)" : "not started as root: nothing to drop"
        }
        audit?.record(privileges)
        let engine = PolicyEngine(policy: compiled)
        let report = await ExpectationReport.run(compiled, engine: engine)
        if let problem = testProblem(report) {
            var rejected = AuditRecord(event: .policyReloadRejected)
            rejected.policyFile = policy ?? DefaultPolicy.fileName
            rejected.reason = problem
            audit?.record(rejected)
            throw FailedStart(message: problem)
        }
        var loaded = AuditRecord(event: .policyLoad)
        loaded.policyFile = policy ?? DefaultPolicy.fileName
        loaded.policySHA256 = policySHA256
        loaded.rules = compiled.rules.count
        loaded.tests = report.passed
        audit?.record(loaded)

        let signals = Signals()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoops)
        let identClient = IdentClient(group: group, port: identPort, logger: logger, metrics: metrics)
        let policyStore = PolicyStore(engine, sha256: policySHA256, identLookup: identClient.lookup)
        let threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        let gateway = GatewayServer(
            configuration: configuration,
            policy: policyStore,
            credentials: credentials,
            group: group,
            threadPool: threadPool,
            logger: logger,
            audit: audit,
            gssAcceptor: gssAcceptor,
            metrics: metrics
        )
        metrics?.policyLoaded(sha256: policySHA256, file: policy ?? DefaultPolicy.fileName)

        let bound: [IPEndpoint]
        do {
            bound = try await gateway.start(adopting: descriptors)
        } catch {
            throw FailedStart(message: "\(error)")
        }
        var metricsEndpoint: MetricsEndpoint?
        if let (metrics, socket) = metricsSetup {
            let endpoint = MetricsEndpoint(metrics: metrics, gateway: gateway)
            do {
                let served = try await endpoint.start(socket.endpoint, adopting: socket.descriptor, group: group)
                logger.info("metrics served", metadata: ["listen": "\(served)", "paths": "/metrics /healthz"])
            } catch {
                _ = try? await gateway.shutdown(grace: .zero)
                throw FailedStart(message: "\(error)")
            }
            metricsEndpoint = endpoint
        }
        for (line, parent) in compiled.routesToItself(listening: bound) {
            logger.warning("the rule on line \(line) routes through this gateway itself (\(parent)): a loop")
        }
        var started = AuditRecord(event: .gatewayStart)
        started.version = Identgate.configuration.version
        started.listen = bound.map(\.description)
        started.policyFile = policy ?? DefaultPolicy.fileName
        started.policySHA256 = policySHA256
        audit?.record(started)
        logger.info(
            "identgate serving",
            metadata: [
                "listen": "\(bound.map(\.description).joined(separator: " "))",
                "policy": "\(policy ?? DefaultPolicy.fileName)",
                "methods": "\(gateway.offeredMethods.map(\.name).joined(separator: ","))",
            ]
        )
        // Ready only now: bound, privileges dropped and verified, policy loaded.
        metrics?.markReady()
        notifier.notify("READY=1", "STATUS=serving on \(bound.map(\.description).joined(separator: " "))", "MAINPID=\(getpid())")
        let watchdog = notifier.watchdogInterval.map { interval in
            Task {
                while !Task.isCancelled {
                    notifier.notify("WATCHDOG=1")
                    try? await Task.sleep(for: interval / 2)
                }
            }
        }

        var signal = ""
        for await event in signals.events {
            switch event {
            case .shutdown(let name):
                signal = name
            case .reload:
                notifier.reloading()
                await reloadPolicy(into: policyStore, audit: audit, metrics: metrics, logger: logger)
                notifier.notify("READY=1", "STATUS=serving; policy reload done (see the log)")
                continue
            case .reopenAuditLog:
                logger.info("SIGUSR1: reopening the audit log", metadata: ["file": "\(Self.absolute(auditLog))"])
                audit?.reopen()
                continue
            }
            break
        }
        notifier.notify("STOPPING=1", "STATUS=stopping")
        watchdog?.cancel()
        logger.info(
            "stopping: no new connections; running sessions may finish",
            metadata: ["signal": "\(signal)", "grace": "\(shutdownGrace)"])
        await metricsEndpoint?.stop()
        let inTime = try await gateway.shutdown(grace: shutdownGrace.amount)
        if !inTime { logger.notice("grace period over; closing the sessions still running") }
        var stopped = AuditRecord(event: .gatewayStop)
        stopped.reason = signal
        audit?.record(stopped)
        try await group.shutdownGracefully()
        try await threadPool.shutdownGracefully()
        logger.info("stopped")
    }
}

extension Run {
    /// Why a compiled policy cannot be used; nil if it can. Its ident time-outs must be
    /// shorter than --negotiate-timeout, which is also each decision's deadline
    /// (docs/architecture.md): otherwise an ident wait would always end at the deadline.
    private func compileProblem(_ compilation: PolicyCompilation) -> String? {
        let path = policy ?? DefaultPolicy.fileName
        guard let compiled = compilation.policy else {
            return "\(path) has errors:\n" + compilation.errors.map(\.description).joined(separator: "\n")
        }
        let negotiation = Double(negotiateTimeout.amount.nanoseconds) / 1e9
        if let scope = compiled.identScopes.first(where: { $0.timeoutSeconds >= negotiation }) {
            return
                "\(path):\(scope.line ?? 0): the ident time-out (\(scope.timeoutSeconds)s) must be shorter than --negotiate-timeout (\(negotiateTimeout)), the deadline of every decision"
        }
        return nil
    }

    /// Why a policy whose tests ran cannot be used; nil if every test passed.
    private func testProblem(_ report: ExpectationReport) -> String? {
        guard !report.failures.isEmpty else { return nil }
        return "\(policy ?? DefaultPolicy.fileName): \(report.failures.count) of its tests failed:\n"
            + report.failures.map { TestCommand.describe($0) }.joined(separator: "\n")
    }

    /// SIGHUP: read, check and test the policy file again; swap only if all is well. The
    /// engine the tests ran on is the one that serves, and the recorded SHA-256 is of the
    /// bytes it was compiled from.
    private func reloadPolicy(into store: PolicyStore, audit: AuditWriter?, metrics: GatewayMetrics?, logger: Logger) async {
        guard let path = policy else {
            logger.notice("SIGHUP: no --policy file to reload; the embedded default stays")
            return
        }
        func reject(_ problem: String) {
            metrics?.policyReloaded(applied: false)
            logger.error("policy reload rejected; the previous policy stays in force", metadata: ["reason": "\(problem)"])
            var rejected = AuditRecord(event: .policyReloadRejected)
            rejected.policyFile = path
            rejected.reason = problem
            audit?.record(rejected)
        }
        let tested: TestedPolicy
        do {
            tested = await TestedPolicy.load(try PolicyFile.read(path))
        } catch {
            return reject("\(error)")
        }
        if let problem = compileProblem(tested.file.compilation) ?? tested.report.flatMap(testProblem) {
            return reject(problem)
        }
        guard let engine = tested.engine, let report = tested.report else { return reject("\(path) did not compile") }
        store.replace(with: engine, sha256: tested.file.sha256)
        metrics?.policyReloaded(applied: true)
        metrics?.policyLoaded(sha256: tested.file.sha256, file: path)
        var reloaded = AuditRecord(event: .policyReload)
        reloaded.policyFile = path
        reloaded.policySHA256 = tested.file.sha256
        reloaded.rules = engine.policy.rules.count
        reloaded.tests = report.passed
        audit?.record(reloaded)
        logger.info(
            "policy reloaded",
            metadata: ["file": "\(path)", "rules": "\(engine.policy.rules.count)", "tests": "\(report.passed) passed"])
    }
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload), delivered by Dispatch rather than an
/// async-signal handler. Installed before the gateway starts, so an early signal is not lost.
struct Signals {
    enum Event: Sendable {
        case shutdown(String)
        case reload
        case reopenAuditLog
    }

    let events: AsyncStream<Event>
    private let sources: [any DispatchSourceSignal]

    init() {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
        let handled: [(Int32, Event)] = [
            (SIGINT, .shutdown("SIGINT")), (SIGTERM, .shutdown("SIGTERM")), (SIGHUP, .reload), (SIGUSR1, .reopenAuditLog),
        ]
        self.sources = handled.map { number, event in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(event) }
            source.resume()
            return source
        }
    }
}

enum AuditFailMode: String, ExpressibleByArgument, CaseIterable {
    case closed, open
}

extension AuditWriter.SyncPolicy: ExpressibleByArgument {}
