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

    @Option(
        help: ArgumentHelp("Users for SOCKS5 username/password, 'user:hash' lines (see 'identgate passwd').", valueName: "file"))
    var passwordFile: String?

    @Option(
        help: ArgumentHelp(
            "SOCKS5 methods to offer, preferred first: none, password. Default: none, or password with --password-file.",
            valueName: "list"))
    var methods: String?

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
        configuration.connectTimeout = connectTimeout.amount
        configuration.idleTimeout = idleTimeout.amount == .zero ? nil : idleTimeout.amount
        configuration.methods = parsedMethods

        let credentials: CredentialStore?
        do {
            credentials = try passwordFile.map(CredentialStore.init(contentsOfFile:))
        } catch {
            throw FailedStart(message: "\(error)")
        }

        let signals = ShutdownSignals()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        let gateway = GatewayServer(
            configuration: configuration,
            policy: RuleList.loopbackClientsOnly,
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
                "policy": "embedded default (loopback clients only)",
                "methods": "\(configuration.methods.isEmpty ? (credentials == nil ? "none" : "password") : methods ?? "")",
            ]
        )

        let signal = await signals.next()
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

/// Exits with status 1 and a one-line message, without the usage text that a
/// ValidationError would print.
struct FailedStart: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// SIGINT and SIGTERM, delivered by Dispatch rather than an async-signal handler.
/// Installed before the gateway starts, so an early signal is not lost.
struct ShutdownSignals {
    private let names: AsyncStream<String>
    private let sources: [any DispatchSourceSignal]

    init() {
        let (names, continuation) = AsyncStream.makeStream(of: String.self)
        self.names = names
        self.sources = [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")].map { number, name in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(name) }
            source.resume()
            return source
        }
    }

    func next() async -> String {
        for await name in names { return name }
        return "end of signals"
    }
}
