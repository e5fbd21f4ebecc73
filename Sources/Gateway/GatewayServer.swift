import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NetAddress
import Privileges
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// The SOCKS gateway: one listening channel per `--listen` address, each accepted
/// connection negotiated by a `NegotiationHandler`, carried by its command's session handler and relayed by `RelayHandler`s.
public final class GatewayServer: Sendable {
    private let context: GatewayContext
    private let group: any EventLoopGroup
    private let resolverPool: NIOThreadPool
    private let listeners: NIOLockedValueBox<[(channel: any Channel, quiescing: ServerQuiescingHelper)]> = .init([])
    /// Ends the grace period of a shutdown under way (`endGracePeriod`).
    private let graceEnd = NIOLockedValueBox<(@Sendable (Bool) -> Void)?>(nil)
    /// Once accepting has stopped: each listener's "all its connections have closed".
    private let quiesced = NIOLockedValueBox<[EventLoopFuture<Void>]>([])
    /// `--connection-driver direct`: the loops that carry the listeners' connections.
    private let direct: DirectDriver?
    /// With the direct driver, the connections its loops handed to SwiftNIO so far.
    var connectionsHandedToSwiftNIO: Int { direct?.handOvers ?? 0 }

    /// Destination names, looked up and kept (`--resolve-cache`); a reload forgets them.
    var resolver: HostResolver { context.resolver }

    public init(
        configuration: GatewayConfiguration,
        policy: any PolicyDecider,
        credentials: (any PasswordVerifier)? = nil,
        group: any EventLoopGroup,
        threadPool: NIOThreadPool,
        logger: Logger,
        audit: AuditWriter? = nil,
        gssAcceptor: GSSAcceptor? = nil,
        httpGSSAcceptor: GSSAcceptor? = nil,
        metrics: GatewayMetrics? = nil,
        lookup: @escaping HostResolver.Lookup = HostResolver.getaddrinfo
    ) {
        self.group = group
        // Lookups get threads of their own: a stalled resolver must not starve password
        // checks, which run on `threadPool`.
        let resolverPool = NIOThreadPool(numberOfThreads: 8)
        resolverPool.start()
        self.resolverPool = resolverPool
        self.context = GatewayContext(
            configuration: configuration,
            policy: policy,
            credentials: credentials,
            resolver: HostResolver(
                threadPool: resolverPool, timeout: configuration.connectTimeout, cacheTTL: configuration.resolveCacheTTL,
                metrics: metrics, lookup: lookup),
            threadPool: threadPool,
            logger: logger,
            audit: audit,
            gssAcceptor: gssAcceptor,
            httpGSSAcceptor: httpGSSAcceptor,
            metrics: metrics
        )
        direct = Self.directDriver(context: context, group: group)
    }

    /// The direct driver, if chosen and able to carry these listeners (else SwiftNIO
    /// carries everything, and the log says why).
    private static func directDriver(context: GatewayContext, group: any EventLoopGroup) -> DirectDriver? {
        guard context.configuration.connectionDriver == .direct else { return nil }
        if let reason = DirectDriver.unsupported(context.configuration, audit: context.audit) {
            context.logger.notice("--connection-driver direct does not serve with \(reason): SwiftNIO carries every connection")
            return nil
        }
        do {
            return try DirectDriver(gateway: context, nioLoops: Array(group.makeIterator()))
        } catch {
            context.logger.error("the direct connection driver could not start: SwiftNIO carries every connection", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Which driver carries the listeners' connections.
    public var connectionDriver: ConnectionDriver { direct == nil ? .nio : .direct }

    /// The SOCKS5 methods offered, most preferred first.
    public var offeredMethods: [SOCKS5AuthMethod] { context.offeredMethods }

    /// BIND listening sockets open right now; every path must close them.
    public var openBindListeners: Int { context.openBindListeners.withLockedValue { $0 } }

    /// Accepts that failed (the descriptor limit reached, say) since the start.
    public var acceptFailures: Int { context.acceptFailures.withLockedValue { $0.total } }

    /// The audit writer's state (queue, failures), for the metrics endpoint; nil: no log.
    public var auditHealth: AuditWriter.Health? { context.audit?.health }

    /// Another address this process serves on (the metrics endpoint): a CONNECT to it
    /// is refused like one to the SOCKS listeners, unless a rule names it.
    public func addOwnListener(_ endpoint: IPEndpoint) {
        context.ownListeners.withLockedValue { $0.append(endpoint) }
    }

    /// Binds every listen address; returns the bound addresses (port 0 becomes a real one).
    /// If one cannot be bound, those already bound are closed and the error is thrown.
    ///
    /// Each address gets one listening socket per event loop (SO_REUSEPORT), and a
    /// loop's connections stay on that loop: no connection is handed between threads.
    ///
    /// `adopting`: sockets already bound and listening (made while root, before the
    /// privilege drop), for each `listen` address in the same order, one per event loop
    /// (`ListeningSocket.open(_:count:)`); nil: bind here.
    ///
    /// `accepting` false: the listeners are set up but accept nothing until
    /// `startAccepting` (a successor's, while the process it takes over still accepts
    /// on the same sockets: the kernel queues the connections meanwhile).
    public func start(adopting descriptors: [[Int32]]? = nil, accepting: Bool = true) async throws -> [IPEndpoint] {
        let loops = Array(group.makeIterator())
        var bound: [IPEndpoint] = []
        if let direct {
            do {
                return try startDirect(direct, adopting: descriptors, accepting: accepting)
            } catch {
                // As below: what was set up is closed, and the direct loops' threads end.
                _ = try? await shutdown(grace: .zero)
                throw error
            }
        }
        do {
            for (index, endpoint) in context.configuration.listen.enumerated() {
                var target = endpoint
                let sockets: [Int32?] = descriptors?[index] ?? Array(repeating: nil, count: loops.count)
                for (number, descriptor) in sockets.enumerated() {
                    let loop = loops[number % loops.count]
                    let quiescing = ServerQuiescingHelper(group: loop)
                    let channel: any Channel
                    do {
                        channel = try await bind(
                            target, on: loop, reusePort: sockets.count > 1, adopting: descriptor, quiescing: quiescing,
                            accepting: accepting)
                    } catch  where number > 0 && descriptor == nil {
                        // The first socket is bound; the others are only an optimization.
                        break
                    }
                    listeners.withLockedValue { $0.append((channel, quiescing)) }
                    // Port 0: the other sockets of the group join the port the first got.
                    target = channel.localAddress?.ipEndpoint ?? target
                }
                bound.append(target)
            }
        } catch {
            _ = try? await shutdown(grace: .zero)
            throw error
        }
        context.ownListeners.withLockedValue { $0 += bound }
        return bound
    }

    /// `start` for the direct driver: the same sockets, each given to a direct loop at once
    /// (so that a failure later is cleaned up by `shutdown`, which closes them through the
    /// loops: a descriptor closed here too would be closed twice, perhaps someone else's).
    private func startDirect(_ direct: DirectDriver, adopting descriptors: [[Int32]]?, accepting: Bool) throws -> [IPEndpoint] {
        var bound: [IPEndpoint] = []
        for (index, endpoint) in context.configuration.listen.enumerated() {
            let sockets: [Int32]
            if let given = descriptors?[index] {
                sockets = given
            } else {
                do {
                    sockets = try ListeningSocket.open(endpoint, count: direct.loopCount).map(\.descriptor)
                } catch {
                    throw ListenError(endpoint: endpoint, reason: "\(error)")
                }
            }
            var target = endpoint
            for (number, descriptor) in sockets.enumerated() {
                if let local = direct.addListener(descriptor, loop: number), number == 0 { target = local }
            }
            bound.append(target)
        }
        context.ownListeners.withLockedValue { $0 += bound }
        if accepting { direct.startAccepting() }
        return bound
    }

    private func bind(
        _ endpoint: IPEndpoint, on loop: any EventLoop, reusePort: Bool, adopting descriptor: Int32?,
        quiescing: ServerQuiescingHelper, accepting: Bool
    ) async throws -> any Channel {
        let gateway = context
        do {
            let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
                .serverChannelOption(.autoRead, value: accepting)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(ChannelOptions.socket(SocketOptionLevel(SOL_SOCKET), SO_REUSEPORT), value: reusePort ? 1 : 0)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                        try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(gateway: gateway))
                    }
                }
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Set here rather than with `childChannelOption`, which applies
                        // each option through a future of its own on every connection.
                        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                        try channel.syncOptions?.setOption(.recvAllocator, value: GatewayContext.relayReceiveAllocator)
                        if !gateway.configuration.proxyProtocolFrom.isEmpty {
                            // Gone already (a balancer's health check often is): whether it
                            // owed a PROXY header cannot be told, and there is nothing to serve.
                            guard let peer = channel.remoteAddress?.ipEndpoint else { throw ChannelError.ioOnClosedChannel }
                            if gateway.isLoadBalancer(peer.address) {
                                try channel.pipeline.syncOperations.addHandler(ProxyHeaderHandler(repeated: gateway.repeated))
                            }
                        }
                        try channel.pipeline.syncOperations.addHandler(NegotiationHandler(gateway: gateway))
                    }
                }
            if let descriptor {
                return try await bootstrap.withBoundSocket(descriptor).get()
            }
            return try await bootstrap.bind(to: SocketAddress(endpoint)).get()
        } catch let error as IOError {
            throw ListenError(endpoint: endpoint, reason: String(cString: strerror(error.errnoCode)))
        } catch {
            throw ListenError(endpoint: endpoint, reason: "\(error)")
        }
    }

    /// The session number the next request would get: a successor numbers its own past it.
    public var upcomingSessionID: UInt64 { context.upcomingSessionID }

    /// After a successor took the listeners over: stops accepting here, and waits for
    /// every connection accepted here to end, at most `timeout` (`endGracePeriod` ends the
    /// wait sooner). Unlike `shutdown`, connections still negotiating are served to their
    /// ends. Returns true if every session ended in time.
    public func drain(timeout: TimeAmount) async throws -> Bool {
        await stopAccepting(draining: true)
        return try await shutdown(grace: timeout)
    }

    /// Ends the wait of a `shutdown` or `drain` under way now, as if its time were up.
    public func endGracePeriod() {
        graceEnd.withLockedValue { $0 }?(false)
    }

    /// Listeners set up with `accepting: false` start accepting.
    public func startAccepting() async {
        direct?.startAccepting()
        let channels = listeners.withLockedValue { $0.map(\.channel) }
        for channel in channels {
            try? await channel.setOption(.autoRead, value: true).get()
        }
    }

    /// Stops accepting (the listening channels are closed when this returns) and tells
    /// every connection: `shutdown` or `drain` then waits for them. `draining`: after a
    /// takeover, connections still negotiating go on (`GatewayContext.draining`).
    public func stopAccepting(draining: Bool = false) async {
        if draining { context.draining.store(true, ordering: .relaxed) }
        if let direct {
            await direct.stopAccepting(draining: draining)
            quiesced.withLockedValue { $0.append(direct.allClosed) }
        }
        let listeners = self.listeners.withLockedValue { listeners in
            defer { listeners = [] }
            return listeners
        }
        let eventLoop = group.next()
        let allClosed = listeners.map { listener in
            let promise = eventLoop.makePromise(of: Void.self)
            listener.quiescing.initiateShutdown(promise: promise)
            return promise.futureResult
        }
        quiesced.withLockedValue { $0 += allClosed }
        for listener in listeners {
            try? await listener.channel.closeFuture.get()
        }
    }

    /// Stops accepting, closes connections still negotiating, and waits for running
    /// relays to end, at most `grace`. Returns true if every session ended in time.
    @discardableResult
    public func shutdown(grace: TimeAmount) async throws -> Bool {
        await stopAccepting()
        let allClosed = quiesced.withLockedValue { $0 }
        let eventLoop = group.next()
        let finished = eventLoop.makePromise(of: Bool.self)
        let completed = NIOLockedValueBox(false)
        let complete: @Sendable (Bool) -> Void = { inTime in
            if completed.withLockedValue({ done in
                defer { done = true }
                return !done
            }) {
                finished.succeed(inTime)
            }
        }
        graceEnd.withLockedValue { $0 = complete }
        eventLoop.scheduleTask(in: grace) { complete(false) }
        EventLoopFuture.andAllComplete(allClosed, on: eventLoop).whenComplete { _ in complete(true) }
        let inTime = try await finished.futureResult.get()
        graceEnd.withLockedValue { $0 = nil }
        await direct?.stop()
        // Not awaited: a lookup stuck in getaddrinfo must not hold up the exit.
        resolverPool.shutdownGracefully { _ in }
        return inTime
    }
}

/// A listen address that could not be bound, said the way an operator reads it.
public struct ListenError: Error, CustomStringConvertible {
    public var endpoint: IPEndpoint
    public var reason: String
    public var description: String { "cannot listen on \(endpoint): \(reason)" }
}
