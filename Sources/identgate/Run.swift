import AccessPolicy
import ArgumentParser
import Dispatch
import Gateway
import Logging
import NIOCore
import NIOPosix
import NetAddress
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

struct Run: AsyncParsableCommand {
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

    @Option(help: ArgumentHelp("Longest wait from accept to a complete request.", valueName: "duration"))
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
            "SOCKS5 methods to offer, preferred first: none, password. Default: none, or password with --password-file.",
            valueName: "list"))
    var methods: String?

    @Option(help: ArgumentHelp("The identd port on clients (RFC 1413: 113). For tests.", visibility: .hidden))
    var identPort: Int = 113

    @Option(help: "How much to log on standard error.")
    var logLevel = LogLevelArgument(.info)

    func validate() throws {
        if passwordFile == nil, parsedMethods.contains(.usernamePassword) {
            throw ValidationError("--methods password needs --password-file")
        }
    }

    private var parsedMethods: [SOCKS5AuthMethod] {
        (methods ?? "").split(separator: ",").compactMap { name in
            switch name.filter({ $0 != " " }) {
            case "none": .noAuthentication
            case "password": .usernamePassword
            default: nil
            }
        }
    }

    func run() async throws {
        let level = logLevel.level
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "identgate")

        if let methods, parsedMethods.count != methods.split(separator: ",").count {
            throw ValidationError("--methods: unknown method in '\(methods)'; use none, password")
        }

        var configuration = GatewayConfiguration()
        if !listen.isEmpty { configuration.listen = listen.map(\.endpoint) }
        configuration.negotiationTimeout = negotiateTimeout.amount
        configuration.bindTimeout = bindTimeout.amount
        configuration.connectTimeout = connectTimeout.amount
        configuration.idleTimeout = idleTimeout.amount == .zero ? nil : idleTimeout.amount
        configuration.methods = parsedMethods

        let credentials: CredentialStore?
        do {
            credentials = try passwordFile.map(CredentialStore.init(contentsOfFile:))
        } catch {
            throw FailedStart(message: "\(error)")
        }

        let signals = Signals()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let identClient = IdentClient(group: group, port: identPort, logger: logger)
        let policyStore = PolicyStore(PolicyEngine(policy: try await loadPolicy(logger: logger), identLookup: identClient.lookup))
        let threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        let gateway = GatewayServer(
            configuration: configuration,
            policy: policyStore,
            credentials: credentials,
            group: group,
            threadPool: threadPool,
            logger: logger
        )

        let bound: [IPEndpoint]
        do {
            bound = try await gateway.start()
        } catch {
            throw FailedStart(message: "\(error)")
        }
        logger.info(
            "identgate serving",
            metadata: [
                "listen": "\(bound.map(\.description).joined(separator: " "))",
                "policy": "\(policy ?? DefaultPolicy.fileName)",
                "methods": "\(configuration.methods.isEmpty ? (credentials == nil ? "none" : "password") : methods ?? "")",
            ]
        )

        var signal = ""
        for await event in signals.events {
            if case .shutdown(let name) = event {
                signal = name
                break
            }
            await reloadPolicy(into: policyStore, identLookup: identClient.lookup, logger: logger)
        }
        logger.info(
            "stopping: no new connections; running sessions may finish",
            metadata: ["signal": "\(signal)", "grace": "\(shutdownGrace)"])
        let inTime = try await gateway.shutdown(grace: shutdownGrace.amount)
        if !inTime { logger.notice("grace period over; closing the sessions still running") }
        try await group.shutdownGracefully()
        try await threadPool.shutdownGracefully()
        logger.info("stopped")
    }
}

extension Run {
    /// The policy to start with: it must compile and pass its own tests, and its ident
    /// time-outs must be shorter than the negotiation time-out.
    private func loadPolicy(logger: Logger) async throws -> Policy {
        guard let path = policy else { return DefaultPolicy.policy }
        let loaded: PolicyLoader.Loaded
        do {
            loaded = try await PolicyLoader.load(file: path)
        } catch {
            throw FailedStart(message: "\(error)")
        }
        if let problem = problem(with: loaded) { throw FailedStart(message: problem) }
        for warning in loaded.compilation.warnings { logger.warning("\(warning)") }
        return loaded.compilation.policy!
    }

    /// Why a loaded policy cannot be used, in full; nil if it can.
    private func problem(with loaded: PolicyLoader.Loaded) -> String? {
        let path = policy ?? DefaultPolicy.fileName
        guard let compiled = loaded.compilation.policy, let report = loaded.report else {
            return "\(path) has errors:\n" + loaded.compilation.errors.map(\.description).joined(separator: "\n")
        }
        if !report.failures.isEmpty {
            return "\(path): \(report.failures.count) of its tests failed:\n"
                + report.failures.map { TestCommand.describe($0) }.joined(separator: "\n")
        }
        let negotiation = Double(negotiateTimeout.amount.nanoseconds) / 1e9
        if let scope = compiled.identScopes.first(where: { $0.timeoutSeconds >= negotiation }) {
            return
                "\(path):\(scope.line ?? 0): the ident time-out (\(scope.timeoutSeconds)s) must be shorter than --negotiate-timeout (\(negotiateTimeout))"
        }
        return nil
    }

    /// SIGHUP: read, check and test the policy file again; swap only if all is well.
    private func reloadPolicy(into store: PolicyStore, identLookup: @escaping IdentLookup, logger: Logger) async {
        guard let path = policy else {
            logger.notice("SIGHUP: no --policy file to reload; the embedded default stays")
            return
        }
        do {
            let loaded = try await PolicyLoader.load(file: path)
            if let problem = problem(with: loaded) {
                logger.error("policy reload rejected; the previous policy stays in force", metadata: ["reason": "\(problem)"])
                return
            }
            store.replace(with: PolicyEngine(policy: loaded.compilation.policy!, identLookup: identLookup))
            logger.info(
                "policy reloaded",
                metadata: [
                    "file": "\(path)", "rules": "\(loaded.compilation.policy!.rules.count)",
                    "tests": "\(loaded.report!.passed) passed",
                ])
        } catch {
            logger.error("policy reload rejected; the previous policy stays in force", metadata: ["reason": "\(error)"])
        }
    }
}

/// Exits with status 1 and a one-line message, without the usage text that a
/// ValidationError would print.
struct FailedStart: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload), delivered by Dispatch rather than an
/// async-signal handler. Installed before the gateway starts, so an early signal is not lost.
struct Signals {
    enum Event: Sendable {
        case shutdown(String)
        case reload
    }

    let events: AsyncStream<Event>
    private let sources: [any DispatchSourceSignal]

    init() {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
        let handled: [(Int32, Event)] = [(SIGINT, .shutdown("SIGINT")), (SIGTERM, .shutdown("SIGTERM")), (SIGHUP, .reload)]
        self.sources = handled.map { number, event in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(event) }
            source.resume()
            return source
        }
    }
}
