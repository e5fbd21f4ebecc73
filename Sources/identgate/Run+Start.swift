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

/// The privileged start: options into a configuration, the keys, policy, sockets and
/// audit log opened as root, the drop, then `serve`.
extension Run {
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

        var configuration = GatewayConfiguration()
        if !listen.isEmpty { configuration.listen = listen.map(\.endpoint) }
        configuration.negotiationTimeout = negotiateTimeout.amount
        configuration.bindTimeout = bindTimeout.amount
        configuration.connectTimeout = connectTimeout.amount
        configuration.resolveCacheTTL = resolveCache.amount
        configuration.idleTimeout = idleTimeout.amount == .zero ? nil : idleTimeout.amount
        configuration.methods = parsedMethods
        configuration.protocols = Set(parsedProtocols)
        configuration.connectionDriver = ConnectionDriver(rawValue: connectionDriverName) ?? .nio
        configuration.busyPoll = busyPoll.amount
        configuration.proxyProtocolFrom = try proxyProtocolFrom.map { text in
            guard let network = IPNetwork(text) else { throw ValidationError("--proxy-protocol-from: '\(text)' is not a network") }
            return network
        }
        do {
            configuration.external = try external.flatMap(GatewayConfiguration.externalAddresses)
        } catch {
            throw FailedStart(message: "\(error)")
        }

        let credentials: (any PasswordVerifier)?
        let policyFile: PolicyFile
        let gssAcceptor: GSSAcceptor?
        let httpGSSAcceptor: GSSAcceptor?
        let signingKey: AuditSigningKey?
        do {
            signingKey = try auditSigningKey.map(AuditSigningKey.init(contentsOfFile:))
            let file = try passwordFile.map { try CredentialStore(contents: TextFile.read($0), fileName: $0) }
            let pam = pamService.map(PAMVerifier.init(service:))
            credentials =
                if let file, let pam { ChainedVerifier(file: file, pam: pam) } else { file ?? pam }
            // Keys are copied into memory here, while still root: a keytab is root's.
            gssAcceptor = try gssapiKeytab.map { try GSSAcceptor(keytab: $0, service: gssapiService) }
            httpGSSAcceptor = try gssapiKeytab.flatMap { keytab in
                do {
                    return try GSSAcceptor(keytab: keytab, service: httpGssapiService ?? "HTTP")
                } catch where httpGssapiService == nil {
                    // Not asked for by name: HTTP clients are offered what else there is.
                    logger.info("the keytab has no HTTP/host keys: HTTP clients are not offered Negotiate")
                    return nil
                }
            }
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
        // A gateway already serving the upgrade socket hands its listeners over; without
        // one, this process binds them, and serves the upgrade socket for its successor.
        let takeover = try upgradeSocket.flatMap { path in
            try Takeover.find(at: path, trusting: Set([0, geteuid()] + (identity.map { [$0.uid] } ?? [])))
        }
        var sockets: [[ListeningSocket]] = []
        var metricsSocket: ListeningSocket?
        var upgradeListener: Int32?
        if takeover == nil {
            (sockets, metricsSocket) = try openSockets(&configuration, eventLoops: eventLoops, logger: logger)
            do {
                upgradeListener = try upgradeSocket.map { try HandoverSocket.listen(at: $0) }
            } catch {
                throw FailedStart(message: "\(error)")
            }
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
                    signingKey: signingKey, afterTakeover: takeover != nil)
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
        let descriptors = sockets.map { $0.map(\.descriptor) }
        let listeners = Listeners(
            gateway: descriptors, metrics: metricsSocket, upgrade: upgradeListener, takeover: takeover)
        try waitFor {
            try await command.serve(
                configuration: settings, policy: compiled, policySHA256: policySHA256, credentials: credentials,
                gssAcceptor: gssAcceptor, httpGSSAcceptor: httpGSSAcceptor, listeners: listeners, dropped: verified, audit: audit,
                notifier: notifier, logger: logger)
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

    /// The listening sockets, made while root: the service manager's (socket activation)
    /// or bound here, one per event loop and address; and the metrics endpoint's.
    func openSockets(
        _ configuration: inout GatewayConfiguration, eventLoops: Int, logger: Logger
    ) throws -> (gateway: [[ListeningSocket]], metrics: ListeningSocket?) {
        var sockets: [[ListeningSocket]]
        var metricsSocket: ListeningSocket?
        do {
            if let activated = try ActivatedSockets.fromEnvironment() {
                // The service manager's sockets are the listeners (docs/operations.md,
                // "Socket activation"): one per address, accepted on one event loop each.
                let gateway = activated.sockets.filter { $0.name != "metrics" }
                guard !gateway.isEmpty else { throw FailedStart(message: "socket activation passed no SOCKS socket, only 'metrics'") }
                // One service unit serves with or without its .socket unit: --listen may
                // stay, as long as it names the sockets passed.
                let passed = Set(gateway.map { "\($0.endpoint)" })
                let named = Set(listen.map { "\($0.endpoint)" })
                guard listen.isEmpty || named == passed else {
                    throw FailedStart(
                        message: "--listen \(named.sorted().joined(separator: ", ")) is not what socket activation passed "
                            + "(\(passed.sorted().joined(separator: ", "))): make ListenStream= and --listen the same, or drop --listen")
                }
                configuration.listen = gateway.map(\.endpoint)
                sockets = gateway.map { [ListeningSocket(descriptor: $0.descriptor, endpoint: $0.endpoint)] }
                if let metrics = activated.sockets.first(where: { $0.name == "metrics" }) {
                    guard metricsListen == nil else {
                        throw FailedStart(message: "--metrics-listen with an activated 'metrics' socket: give one or the other")
                    }
                    metricsSocket = ListeningSocket(descriptor: metrics.descriptor, endpoint: metrics.endpoint)
                } else {
                    metricsSocket = try metricsListen.map { try ListeningSocket.open($0.endpoint, backlog: 64) }
                }
                logger.info("socket activation: \(activated.sockets.map { "\($0.name)=\($0.endpoint)" }.joined(separator: " "))")
            } else {
                sockets = try configuration.listen.map {
                    try ListeningSocket.open($0, count: eventLoops)
                }
                metricsSocket = try metricsListen.map { try ListeningSocket.open($0.endpoint, backlog: 64) }
            }
        } catch let failure as FailedStart {
            throw failure
        } catch {
            throw FailedStart(message: "\(error)")
        }
        return (sockets, metricsSocket)
    }

    /// The sockets bound before the drop, or the running gateway to take them from.
    struct Listeners {
        /// One array per --listen address, one socket per event loop.
        var gateway: [[Int32]]
        var metrics: ListeningSocket?
        /// The upgrade socket (--upgrade-socket), listening.
        var upgrade: Int32?
        /// Set when the listeners are to be taken from a running gateway instead.
        var takeover: Takeover?
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
    var eventLoops: Int { System.coreCount }

    /// The user to become, or nil to stay as we are; refuses root without `--user`.
    func privilegeTarget() throws -> TargetIdentity? {
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
}
