import AccessPolicy
import ArgumentParser
import AuditLog
import CBuildInfo
import CommandSupport
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

/// Serving after the drop: the gateway, metrics, signals, reloads and the lifecycle records.
extension Run {
    func serve(
        configuration: GatewayConfiguration, policy compiled: Policy, policySHA256: String, credentials: (any PasswordVerifier)?,
        gssAcceptor: GSSAcceptor?, httpGSSAcceptor: GSSAcceptor?, listeners: Listeners, dropped: PrivilegeReport?, audit: AuditWriter?,
        notifier: ServiceNotifier, logger: Logger
    ) async throws {
        audit?.start()
        defer { audit?.shutdown() }
        if let dropped {
            logger.info("privileges dropped", metadata: ["user": "\(dropped.identity)", "verified": "\(dropped)"])
            audit?.record(.privileges(user: dropped.identity.description, verified: dropped.description))
        } else {
            audit?.record(
                .privileges(
                    user: "uid \(geteuid())",
                    verified: geteuid() == 0 ? "kept root (--stay-root)" : "not started as root: nothing to drop"))
        }
        let engine = PolicyEngine(policy: compiled)
        let report = await ExpectationReport.run(compiled, engine: engine)
        if let problem = testProblem(report) {
            listeners.takeover?.failed(problem)
            audit?.record(.policyReloadRejected(file: policy ?? DefaultPolicy.fileName, reason: problem))
            throw FailedStart(message: problem)
        }
        audit?.record(
            .policyLoad(
                file: policy ?? DefaultPolicy.fileName, sha256: policySHA256, rules: compiled.rules.count,
                testsPassed: report.passed))

        // Taking over: the running gateway's listeners, asked for only now that this one
        // is ready to serve, so that it keeps accepting as long as possible.
        var configuration = configuration
        var listeners = listeners
        let handedAuditLog = try listeners.takeover.map { try adopt(from: $0, into: &configuration, listeners: &listeners) }
        let metrics = listeners.metrics.map { _ in GatewayMetrics(version: Identgate.version, commit: Identgate.commit) }

        let signals = Signals()
        var settings = GatewayService.Settings(
            configuration: configuration, eventLoops: eventLoops, identPort: identPort,
            policyFile: policy ?? DefaultPolicy.fileName, version: Identgate.configuration.version)
        settings.directoryCacheTTL = directoryCache.amount
        let service = GatewayService(
            settings: settings,
            engine: engine, policySHA256: policySHA256, credentials: credentials, gssAcceptor: gssAcceptor, httpGSSAcceptor: httpGSSAcceptor,
            audit: audit,
            metrics: metrics, logger: logger)
        let bound: [IPEndpoint]
        let metricsListener = listeners.metrics.map { GatewayService.MetricsListener(endpoint: $0.endpoint, descriptor: $0.descriptor) }
        do {
            // A successor accepts only once the running gateway has stopped accepting.
            bound = try await service.start(
                adopting: listeners.gateway, metricsListener: metricsListener, accepting: listeners.takeover == nil
            ).socks
        } catch {
            listeners.takeover?.failed("\(error)")
            throw FailedStart(message: "\(error)")
        }
        let drainingReports = DrainingReports()
        if let takeover = listeners.takeover {
            try await completeTakeover(
                takeover, service: service, metricsListener: metricsListener, handedAuditLog: handedAuditLog ?? nil, audit: audit,
                metrics: metrics, reports: drainingReports, logger: logger)
        }
        let upgrades = listeners.upgrade.map { upgrade in
            serveUpgrades(
                on: upgrade, listeners: listeners, bound: bound, service: service, audit: audit, signals: signals, logger: logger)
        }
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
                await reloadPolicy(into: service, logger: logger)
                notifier.notify("READY=1", "STATUS=serving; policy reload done (see the log)")
                continue
            case .reopenAuditLog:
                logger.info("SIGUSR1: reopening the audit log", metadata: ["file": "\(Self.absolute(auditLog))"])
                audit?.reopen()
                continue
            case .takenOver:
                break
            }
            break
        }
        watchdog?.cancel()
        // Taken over (or a signal came just as a successor took the listeners): drain.
        if let takenOver = upgrades?.finish() {
            try await drain(
                after: takenOver, service: service, audit: audit, metrics: metrics, reports: drainingReports, signals: signals,
                notifier: notifier, logger: logger, signalled: signal.isEmpty ? nil : signal)
            return
        }
        notifier.notify("STOPPING=1", "STATUS=stopping")
        logger.info(
            "stopping: no new connections; running sessions may finish",
            metadata: ["signal": "\(signal)", "grace": "\(shutdownGrace)"])
        try await service.stop(grace: shutdownGrace.amount, reason: signal)
        logger.info("stopped")
    }

    /// Why a compiled policy cannot be used; nil if it can. Its ident time-outs must be
    /// shorter than --negotiate-timeout, which is also each decision's deadline
    /// (docs/architecture.md): otherwise an ident wait would always end at the deadline.
    func compileProblem(_ compilation: PolicyCompilation) -> String? {
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
    func testProblem(_ report: ExpectationReport) -> String? {
        guard !report.failures.isEmpty else { return nil }
        return "\(policy ?? DefaultPolicy.fileName): \(report.failures.count) of its tests failed:\n"
            + report.failures.map { TestCommand.describe($0) }.joined(separator: "\n")
    }

    /// SIGHUP: read, check and test the policy file again; swap only if all is well. The
    /// engine the tests ran on is the one that serves, and the recorded SHA-256 is of the
    /// bytes it was compiled from.
    func reloadPolicy(into service: GatewayService, logger: Logger) async {
        guard let path = policy else {
            logger.notice("SIGHUP: no --policy file to reload; the embedded default stays")
            return
        }
        let tested: TestedPolicy
        do {
            tested = await TestedPolicy.load(try PolicyFile.read(path))
        } catch {
            return service.rejectPolicy(file: path, reason: "\(error)")
        }
        if let problem = compileProblem(tested.file.compilation) ?? tested.report.flatMap(testProblem) {
            return service.rejectPolicy(file: path, reason: problem)
        }
        guard let engine = tested.engine, let report = tested.report else {
            return service.rejectPolicy(file: path, reason: "\(path) did not compile")
        }
        service.replacePolicy(with: engine, sha256: tested.file.sha256, file: path, testsPassed: report.passed)
    }
}
