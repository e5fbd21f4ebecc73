import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// On a listening channel: when accept fails for want of resources (EMFILE at the
/// descriptor limit, ENFILE, ENOBUFS, ENOMEM), stop accepting for `retryInterval`, then
/// try again; say so once per episode (for all listening sockets together), never a
/// line per failure.
///
/// Why not SwiftNIO's `AcceptBackoffHandler`: it delays the next `read`, but a failed
/// accept leaves the channel's read interest registered, and the listening socket stays
/// readable (the connection is still in the backlog), so epoll wakes the loop again at
/// once: measured, 267,000 failed accepts and both cores busy in 4 s. Turning `autoRead`
/// off removes the read interest; turning it on again restores it.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = Channel

    static let retryInterval = TimeAmount.milliseconds(250)
    static let quietPeriod = TimeAmount.seconds(1)

    private let gateway: GatewayContext
    private var resume: Scheduled<Void>?
    private var endCheck: Scheduled<Void>?

    init(gateway: GatewayContext) {
        self.gateway = gateway
    }

    /// An accept worked. The episode ends when accepts keep working for `quietPeriod`
    /// (one that frees a descriptor for a moment and fails again is still the same one).
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if endCheck == nil, gateway.acceptFailureEpisodeUnderWay {
            endCheck = context.eventLoop.assumeIsolated().scheduleTask(in: Self.quietPeriod) {
                self.endCheck = nil
                self.endEpisodeIfQuiet()
            }
        }
        context.fireChannelRead(data)
    }

    private func endEpisodeIfQuiet() {
        gateway.endAcceptFailureEpisodeIfQuiet(quietPeriod: Self.quietPeriod)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        gateway.acceptFailed(errno: error.errnoCode, retryInterval: Self.retryInterval)
        guard resume == nil else { return }
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: Self.retryInterval) {
            self.resume = nil
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        endCheck?.cancel()
    }
}

extension GatewayContext {
    /// An accept failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM): counted,
    /// and logged once per episode, for every listening socket of either driver.
    func acceptFailed(errno code: Int32, retryInterval: TimeAmount) {
        let starts = acceptFailures.withLockedValue { state in
            state.total += 1
            defer {
                state.episode = (state.episode?.started ?? .now, (state.episode?.failures ?? 0) + 1, .now)
            }
            return state.episode == nil
        }
        if starts {
            logger.error(
                "cannot accept new connections; pausing accepts, retrying every \(retryInterval), logged once until accepting works again",
                metadata: ["error": "\(String(cString: strerror(code)))"])
        }
    }

    /// Accepts have worked for `quietPeriod`: the episode is over, and the log says so.
    func endAcceptFailureEpisodeIfQuiet(quietPeriod: TimeAmount) {
        let ended = acceptFailures.withLockedValue { state -> (ContinuousClock.Instant, Int)? in
            guard let episode = state.episode, ContinuousClock.now - episode.lastFailure >= .nanoseconds(quietPeriod.nanoseconds)
            else { return nil }
            state.episode = nil
            return (episode.started, episode.failures)
        }
        guard let (started, failures) = ended else { return }
        logger.notice(
            "accepting connections again",
            metadata: ["failed accepts": "\(failures)", "paused for": "\((ContinuousClock.now - started).components.seconds) s"])
    }

    /// Whether an accept failure episode is under way.
    var acceptFailureEpisodeUnderWay: Bool { acceptFailures.withLockedValue { $0.episode != nil } }
}
