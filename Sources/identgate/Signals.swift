import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT and SIGTERM (stop) and SIGHUP (reload), delivered by Dispatch rather than an
/// async-signal handler. Installed before the gateway starts, so an early signal is not lost.
struct Signals {
    enum Event: Sendable {
        case shutdown(String)
        case reload
        case reopenAuditLog
    }

    let events: AsyncStream<Event>
    private let sources: [any DispatchSourceSignal]

    init() {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
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
