import CDirectIO
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// The direct connection driver (`--connection-driver direct`; docs/architecture.md):
/// one `DirectLoop` thread per SwiftNIO event loop, each with its own listening socket
/// per address (SO_REUSEPORT), carrying SOCKS CONNECT sessions that need no waiting on
/// raw sockets, and handing every other connection to SwiftNIO mid-negotiation
/// (`handOver`), on the SwiftNIO loop of the same index.
final class DirectDriver: @unchecked Sendable {
    let gateway: GatewayContext
    let allocator = ByteBufferAllocator()
    private let loops: [DirectLoop]
    private let nioLoops: [any EventLoop]
    private var threads: [pthread_t] = []
    /// Completed once accepting has stopped and every connection of every loop has closed.
    private let idle: EventLoopPromise<Void>
    private let handed = HandedOverChannels()
    /// Connections handed to SwiftNIO since the start.
    var handOvers: Int { handed.total }

    /// Where the driver is between start and stop; one lock for all of it, so that "every
    /// loop and every handed-over channel is empty" is read in one piece.
    private struct Lifecycle {
        var accepting = false
        /// `stopAccepting` has run (once: a drain's shutdown must not end the sessions its
        /// drain let go on).
        var stopped = false
        /// Loops without a connection since accepting stopped.
        var loopsIdle = 0
        /// No channel handed to SwiftNIO is open since accepting stopped.
        var handedIdle = false
        /// `idle` has been completed.
        var idleCompleted = false
    }

    private let lifecycle = NIOLockedValueBox(Lifecycle())

    init(gateway: GatewayContext, nioLoops: [any EventLoop]) throws {
        self.gateway = gateway
        self.nioLoops = nioLoops
        let busyPoll = UInt64(max(0, gateway.configuration.busyPoll.nanoseconds))
        self.loops = try nioLoops.indices.map { try DirectLoop(index: $0, busyPoll: busyPoll) }
        self.idle = nioLoops[0].makePromise(of: Void.self)
        for loop in loops {
            var thread = pthread_t()
            let body = Unmanaged.passRetained(ThreadBody {
                identgate_name_thread("identgate-dir-\(loop.index)")
                loop.run()
            })
            let created = pthread_create(
                &thread, nil,
                { argument in
                    guard let argument else { return nil }
                    let body = Unmanaged<ThreadBody>.fromOpaque(argument).takeRetainedValue()
                    body.run()
                    return nil
                }, body.toOpaque())
            guard created == 0 else {
                body.release()
                stopThreads()
                throw DirectDriverError.system("pthread_create", created)
            }
            threads.append(thread)
        }
    }

    func nioLoop(_ index: Int) -> any EventLoop { nioLoops[index % nioLoops.count] }

    /// The loop for a listener's `number`th socket.
    var loopCount: Int { loops.count }

    /// A listening socket for loop `number`; accepting once `startAccepting` is called
    /// (at once if it has been). Returns the address it is bound to.
    func addListener(_ descriptor: Int32, loop number: Int) -> IPEndpoint? {
        let loop = loops[number % loops.count]
        let endpoint = IPEndpoint.local(of: descriptor)
        loop.execute { [self] in
            let listener = DirectListener(descriptor: descriptor, loop: loop, driver: self)
            loop.addListener(listener)
            if lifecycle.withLockedValue({ $0.accepting }) { listener.startAccepting() }
        }
        return endpoint
    }

    func startAccepting() {
        lifecycle.withLockedValue { $0.accepting = true }
        for loop in loops {
            loop.execute { for listener in loop.listeners { listener.startAccepting() } }
        }
    }

    /// Closes every listening socket; `draining` false (a shutdown): connections not yet
    /// relaying end too. Returns once every loop has done so; `allClosed` completes when
    /// the last connection has closed.
    func stopAccepting(draining: Bool) async {
        let first = lifecycle.withLockedValue { state in
            defer {
                state.accepting = false
                state.stopped = true
            }
            return !state.stopped
        }
        guard first else { return }
        await onEveryLoop { loop in
            for listener in loop.listeners {
                listener.close()
                loop.removeListener(listener)
            }
            if !draining {
                for connection in loop.openConnections { connection.gatewayStopping() }
            }
            if loop.connections == 0 {
                self.loopIdle()
            } else {
                loop.onIdle = { [self] in
                    loop.onIdle = nil
                    loopIdle()
                }
            }
        }
        handed.quiesce { [self] in
            noteIdle { $0.handedIdle = true }
        }
    }

    var allClosed: EventLoopFuture<Void> { idle.futureResult }

    private func loopIdle() {
        noteIdle { $0.loopsIdle += 1 }
    }

    /// Applies `change`, then completes `idle` (once) if every loop has no connection left
    /// and no channel handed to SwiftNIO is open. (A loop's connection reserves its
    /// hand-over before the loop counts it closed, so the two cannot both look empty while
    /// one is on its way.)
    private func noteIdle(_ change: (inout Lifecycle) -> Void) {
        let loopCount = loops.count
        let complete = lifecycle.withLockedValue { state in
            change(&state)
            guard !state.idleCompleted, state.loopsIdle == loopCount, state.handedIdle else { return false }
            state.idleCompleted = true
            return true
        }
        if complete { idle.succeed() }
    }

    /// Completes `idle` (once) whatever is still open: the grace period is over.
    private func endIdleWait() {
        let first = lifecycle.withLockedValue { state in
            defer { state.idleCompleted = true }
            return !state.idleCompleted
        }
        if first { idle.succeed() }
    }

    /// The grace period is over: every connection still open ends, then the threads stop.
    func stop() async {
        guard !threads.isEmpty else { return }
        await onEveryLoop { loop in
            for connection in loop.openConnections { connection.gatewayStopped() }
            loop.stop()
        }
        handed.closeAll()
        stopThreads()
        endIdleWait()
    }

    private func stopThreads() {
        for loop in loops { loop.execute { loop.stop() } }
        for thread in threads { pthread_join(thread, nil) }
        threads = []
    }

    private func onEveryLoop(_ work: @escaping @Sendable (DirectLoop) -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            for loop in loops {
                group.addTask {
                    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                        loop.execute {
                            work(loop)
                            done.resume()
                        }
                    }
                }
            }
        }
    }

    /// A connection the direct loop cannot carry goes to SwiftNIO: a channel for its
    /// socket, with a `NegotiationHandler` that resumes from `machine` and reads `bytes`
    /// first, under the same deadline.
    func handOver(
        _ descriptor: Int32, machine: SOCKSServerStateMachine, bytes: ByteBuffer, atStart: Bool, deadline: NIODeadline, loop: Int
    ) {
        let gateway = self.gateway
        let handed = self.handed
        handed.reserve()
        ClientBootstrap(group: nioLoop(loop))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let options = channel.syncOptions
                    try options?.setOption(.allowRemoteHalfClosure, value: true)
                    try options?.setOption(.recvAllocator, value: GatewayContext.relayReceiveAllocator)
                    // Not a byte read before the ones already read have gone through.
                    try options?.setOption(.autoRead, value: false)
                    try channel.pipeline.syncOperations.addHandler(
                        NegotiationHandler(gateway: gateway, resuming: machine, atStart: atStart, deadline: deadline))
                }
            }
            .withConnectedSocket(descriptor)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    handed.made(channel)
                    channel.pipeline.fireChannelRead(bytes)
                    channel.setOption(.autoRead, value: true).whenFailure { _ in channel.close(promise: nil) }
                case .failure(let error):
                    handed.made(nil)
                    gateway.logger.warning("a connection could not be handed to SwiftNIO", metadata: ["error": "\(error)"])
                }
            }
    }
}

extension DirectDriver {
    /// Why the direct driver cannot carry this gateway's listeners (SwiftNIO then carries
    /// everything), or nil.
    static func unsupported(_ configuration: GatewayConfiguration, audit: AuditWriter?) -> String? {
        if !configuration.proxyProtocolFrom.isEmpty { return "--proxy-protocol-from (every connection starts with a PROXY header)" }
        if audit?.relayWaitsForWrite == true { return "--audit-sync always (a relay waits for its decision's record)" }
        if !configuration.protocols.contains(.socks) { return "--protocols without socks" }
        return nil
    }
}

/// What a direct loop's thread runs.
private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
