import AuditLog
import CommandSupport
import Gateway
import Logging
import NIOCore
import NetAddress
import Privileges

#if canImport(Glibc)
    import Glibc
#endif

/// Seamless upgrades in the serving loop (docs/operations.md, "Seamless upgrade"): taking
/// the listeners over, handing them on, and draining after that.
extension Run {
    /// The successor's side: the running gateway's listeners in place of bound ones.
    /// Returns the audit log the running gateway writes (nil: none it shares).
    func adopt(from takeover: Takeover, into configuration: inout GatewayConfiguration, listeners: inout Listeners) throws -> String? {
        let (handed, descriptors) = try takeover.receiveSockets()
        var byIndex: [Int: (endpoint: IPEndpoint, descriptors: [Int32])] = [:]
        for (listener, descriptor) in zip(handed.listeners, descriptors) {
            switch listener {
            case .gateway(let index, let endpoint):
                byIndex[index, default: (endpoint, [])].descriptors.append(descriptor)
            case .metrics(let endpoint):
                listeners.metrics = ListeningSocket(descriptor: descriptor, endpoint: endpoint)
            case .upgrade:
                listeners.upgrade = descriptor
            }
        }
        let addresses = byIndex.keys.sorted()
        let served = addresses.compactMap { byIndex[$0]?.endpoint }
        let named = listen.map(\.endpoint)
        guard named.isEmpty || Set(named.map(\.description)) == Set(served.map(\.description)) else {
            let reason =
                "--listen \(named.map(\.description).joined(separator: ", ")) is not what the running gateway serves "
                + "(\(served.map(\.description).joined(separator: ", "))): a takeover keeps the addresses; restart to change them"
            takeover.failed(reason)
            throw FailedStart(message: reason)
        }
        guard !served.isEmpty else {
            takeover.failed("no listeners handed over")
            throw FailedStart(message: "the running gateway handed over no listeners")
        }
        configuration.listen = served
        listeners.gateway = addresses.compactMap { byIndex[$0]?.descriptors }
        configuration.firstSessionID = handed.firstSession
        if listeners.metrics == nil, let metricsListen {
            // Not served by the running gateway: bound here (as this user: a port above 1023).
            do {
                listeners.metrics = try ListeningSocket.open(metricsListen.endpoint, backlog: 64)
            } catch {
                takeover.failed("\(error)")
                throw FailedStart(message: "\(error)")
            }
        }
        return handed.auditLog
    }

    /// The successor's side, once its listeners are set up: the running gateway stops
    /// accepting and says where its audit chain ends; this one accepts from then on (the
    /// kernel queues connections in between), goes on from there, and follows the drain.
    func completeTakeover(
        _ takeover: Takeover, service: GatewayService, metricsListener: GatewayService.MetricsListener?, handedAuditLog: String?,
        audit: AuditWriter?, metrics: GatewayMetrics?, reports: DrainingReports, logger: Logger
    ) async throws {
        let chain: AuditChain?
        do {
            chain = try takeover.serving()
        } catch let refused as Takeover.Refused {
            throw FailedStart(message: refused.message)
        } catch {
            // The sockets are here: the running gateway may have stopped, or hung.
            logger.error("the gateway taken over did not confirm; its audit chain is not continued", metadata: ["error": "\(error)"])
            audit?.startOwnChain()
            try await startAccepting(service, metricsListener: metricsListener)
            return
        }
        try await startAccepting(service, metricsListener: metricsListener)
        if let audit, let chain, handedAuditLog == audit.path {
            audit.continueChain(after: chain, predecessor: "\(takeover.name)")
        } else {
            audit?.startOwnChain()
        }
        logger.notice(
            "took the listeners over from the running gateway; it drains its sessions", metadata: ["predecessor": "\(takeover.name)"])
        takeover.followDraining(metrics: metrics, logger: logger, reported: reports)
    }

    private func startAccepting(_ service: GatewayService, metricsListener: GatewayService.MetricsListener?) async throws {
        do {
            try await service.startAccepting(metricsListener: metricsListener)
        } catch {
            throw FailedStart(message: "\(error)")
        }
    }

    /// The running side: the upgrade socket's thread, handing the listeners served now.
    func serveUpgrades(
        on upgrade: Int32, listeners: Listeners, bound: [IPEndpoint], service: GatewayService, audit: AuditWriter?, signals: Signals,
        logger: Logger
    ) -> UpgradeServer {
        var handing: [(listener: HandedSockets.Listener, descriptor: Int32)] = []
        for (index, descriptors) in listeners.gateway.enumerated() where index < bound.count {
            handing += descriptors.map { (.gateway(index: index, endpoint: bound[index]), $0) }
        }
        if let metrics = listeners.metrics { handing.append((.metrics(metrics.endpoint), metrics.descriptor)) }
        let auditPath = Self.absolute(auditLog)
        let continuation = signals.continuation
        let server = UpgradeServer(
            listener: upgrade, handing: handing, upcomingSession: { service.upcomingSessionID },
            auditPath: auditLog == "off" || auditLog == "-" ? nil : auditPath, audit: audit, logger: logger,
            takenOver: { continuation.yield(.takenOver($0)) })
        server.start()
        return server
    }

    /// The running side, taken over: the shared audit file ended, the sessions served to
    /// their ends (or the drain time-out; SIGTERM shortens it to --shutdown-grace), the
    /// successor told how many are left every second.
    func drain(
        after handover: UpgradeServer.TakenOver, service: GatewayService, audit: AuditWriter?, metrics: GatewayMetrics?,
        reports: DrainingReports, signals: Signals, notifier: ServiceNotifier, logger: Logger, signalled: String?
    ) async throws {
        let successor = "pid \(handover.successor.pid)"
        metrics?.markDraining("taken over by \(successor)")
        notifier.notify("STATUS=draining: taken over by \(successor)")
        // Not accepting here once the successor does: no connection is taken by both
        // processes' event loops at once, and none is refused (the kernel queues them).
        await service.stopAccepting()
        var chain: AuditChain?
        if let audit, let drainFile = handover.drainFile {
            chain = await audit.handOver(successor: successor, drainFile: drainFile.descriptor, drainPath: drainFile.path)
        }
        let connection = handover.connection
        try? connection.send(HandoverMessage.stopped(chain: chain.map { ($0.lastHash, $0.nextSequence) }).text)
        logger.notice(
            "taken over: no new connections here; the sessions running here go on until they end",
            metadata: [
                "successor": "\(successor)", "drain-timeout": "\(drainTimeout)",
                "audit": "\(handover.drainFile?.path ?? "-")",
            ])
        let reporter = Task {
            while !Task.isCancelled {
                // Own sessions and those of older processes still draining.
                let open = metrics.map { $0.openSessions + reports.total }
                try? connection.send(HandoverMessage.draining(sessions: open).text)
                try? await Task.sleep(for: .seconds(1))
            }
        }
        let grace = shutdownGrace.amount
        let events = signals.events
        if let signalled {
            // The signal came as the successor took over: the sessions here get the grace only.
            logger.notice("\(signalled) while draining: the sessions left may go on for --shutdown-grace")
            Task {
                try? await Task.sleep(for: .nanoseconds(grace.nanoseconds))
                service.endGracePeriod()
            }
        }
        let signalWatcher = Task {
            for await event in events {
                switch event {
                case .shutdown(let name):
                    logger.notice("\(name) while draining: the sessions left may go on for --shutdown-grace")
                    try? await Task.sleep(for: .nanoseconds(grace.nanoseconds))
                    service.endGracePeriod()
                    return
                case .reopenAuditLog:
                    audit?.reopen()
                case .reload, .takenOver:
                    continue
                }
            }
        }
        let inTime = try await service.stop(grace: drainTimeout.amount, reason: "taken over by \(successor)", draining: true)
        reporter.cancel()
        signalWatcher.cancel()
        try? connection.send(HandoverMessage.drained.text)
        connection.close()
        logger.info(inTime ? "drained: every session here has ended" : "drain over: the sessions left were closed")
    }
}
