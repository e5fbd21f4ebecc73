import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT and SIGTERM (stop), SIGHUP (reload) and SIGUSR1 (reopen the audit log), delivered by Dispatch rather than an
/// async-signal handler. Installed before the gateway starts, so an early signal is not lost.
struct Signals {
    enum Event: Sendable {
        case shutdown(String)
        case reload
        case reopenAuditLog
        /// Not a signal: a successor took the listeners over (`UpgradeServer`).
        case takenOver(UpgradeServer.TakenOver)
    }

    let events: AsyncStream<Event>
    /// For events that are not signals, into the same stream.
    let continuation: AsyncStream<Event>.Continuation
    private let sources: [any DispatchSourceSignal]

    init() {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
        self.continuation = continuation
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
