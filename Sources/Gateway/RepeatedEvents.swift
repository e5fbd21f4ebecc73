import Logging
import NIOConcurrencyHelpers
import NIOCore

/// An event a peer can cause as often as it likes: each would otherwise be a log line, so
/// one client could flood the log (measured before this: ~14,500 lines in 3 s from one
/// client sending PROXY headers).
enum RepeatedEvent: String, CaseIterable, Sendable {
    case untrustedProxyHeader = "untrusted_proxy_header"
    case refusedProxyHeader = "refused_proxy_header"
    case negotiationTimeout = "negotiation_timeout"
    case passwordFailure = "password_failure"
    case limitRefusal = "limit_refusal"
    case bindPeerTimeout = "bind_peer_timeout"

    var message: String {
        switch self {
        case .untrustedProxyHeader: "PROXY protocol header from a peer outside --proxy-protocol-from; closing"
        case .refusedProxyHeader: "PROXY protocol header refused; closing"
        case .negotiationTimeout: "negotiation timed out"
        case .passwordFailure: "password authentication failed"
        case .limitRefusal: "request refused by a limit"
        case .bindPeerTimeout: "BIND: no peer connected in time"
        }
    }

    var level: Logger.Level {
        switch self {
        case .negotiationTimeout, .limitRefusal, .bindPeerTimeout: .info
        case .untrustedProxyHeader, .refusedProxyHeader, .passwordFailure: .notice
        }
    }
}

/// Logs each cause once per episode, with a count: the first occurrence as it comes (with
/// its details), then, while more come, one line every `summaryInterval` saying how many;
/// an interval without any ends the episode. As the accept back-off already does for
/// failed accepts. The metrics count every occurrence.
final class RepeatedEvents: Sendable {
    static let summaryInterval: TimeAmount = .seconds(10)

    private struct Episode {
        var started: NIODeadline
        var total = 1
        var sinceSummary = 0
    }

    private let logger: Logger
    private let metrics: GatewayMetrics?
    private let episodes = NIOLockedValueBox<[RepeatedEvent: Episode]>([:])
    /// Every occurrence since the start, by cause (for tests).
    let totals = NIOLockedValueBox<[RepeatedEvent: Int]>([:])

    init(logger: Logger, metrics: GatewayMetrics?) {
        self.logger = logger
        self.metrics = metrics
    }

    func occurred(_ event: RepeatedEvent, on eventLoop: any EventLoop, metadata: Logger.Metadata = [:]) {
        metrics?.repeatedEvent(event)
        totals.withLockedValue { $0[event, default: 0] += 1 }
        let starts = episodes.withLockedValue { episodes in
            guard episodes[event] != nil else {
                episodes[event] = Episode(started: .now())
                return true
            }
            episodes[event]?.total += 1
            episodes[event]?.sinceSummary += 1
            return false
        }
        guard starts else { return }
        var metadata = metadata
        metadata["repeats"] = "counted, one line every \(Self.summaryInterval.seconds) s while they go on"
        logger.log(level: event.level, "\(event.message)", metadata: metadata)
        eventLoop.scheduleRepeatedTask(initialDelay: Self.summaryInterval, delay: Self.summaryInterval) { task in
            self.summarize(event, task: task)
        }
    }

    private func summarize(_ event: RepeatedEvent, task: RepeatedTask) {
        let report = episodes.withLockedValue { episodes -> (count: Int, ended: Episode?)? in
            guard let episode = episodes[event] else { return nil }
            if episode.sinceSummary == 0 {
                episodes[event] = nil
                return (0, episode)
            }
            episodes[event]?.sinceSummary = 0
            return (episode.sinceSummary, nil)
        }
        guard let report else { return task.cancel() }
        if let ended = report.ended {
            task.cancel()
            guard ended.total > 1 else { return }
            let seconds = (NIODeadline.now() - ended.started).nanoseconds / 1_000_000_000
            logger.log(level: event.level, "\(event.message): episode over, \(ended.total) in \(seconds) s")
        } else {
            logger.log(level: event.level, "\(event.message): \(report.count) more in the last \(Self.summaryInterval.seconds) s")
        }
    }
}

extension TimeAmount {
    fileprivate var seconds: Int64 { nanoseconds / 1_000_000_000 }
}
