import CDirectIO
import NIOCore
import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

/// A listening socket of one direct loop (one per loop and address, SO_REUSEPORT, as
/// SwiftNIO's listeners): accepts with accept4, already non-blocking, and starts a
/// `DirectConnection` for each. At the descriptor limit it pauses as `AcceptPauseHandler`
/// does (the same episode, logged once for both drivers).
final class DirectListener {
    let descriptor: Int32
    /// The address connections name as their listener (getsockname once, here); for a
    /// wildcard address each connection asks its own.
    let endpoint: IPEndpoint
    private let isWildcard: Bool
    private unowned let loop: DirectLoop
    private let driver: DirectDriver
    private var paused = false
    private var registered = false
    private var closed = false
    /// When the next check of the accept failure episode's end is due.
    private var episodeCheckPending = false

    /// At most this many accepts per readiness, so that one busy listener does not
    /// starve the connections already open (the rest wait for the next turn).
    static let acceptsPerTurn = 64

    init(descriptor: Int32, loop: DirectLoop, driver: DirectDriver) {
        self.descriptor = descriptor
        self.loop = loop
        self.driver = driver
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        // Accepted sockets inherit TCP_NODELAY from here: one system call per connection
        // fewer (replies and relayed bytes go out at once, as SwiftNIO's channels send them).
        var one: Int32 = 1
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let local = IPEndpoint.local(of: descriptor) ?? IPEndpoint(address: .v4(.any), port: 0)
        self.endpoint = local
        self.isWildcard = local.address == .v4(.any) || local.address == .v6(.any)
    }

    /// Starts (or resumes) accepting: the socket joins the loop's epoll set.
    func startAccepting() {
        guard !registered, !closed else { return }
        // Level-triggered: a connection left in the backlog after `acceptsPerTurn` wakes
        // the loop again.
        registered = loop.register(descriptor, as: .listener(self), events: EPOLLIN.rawValue) != nil
    }

    private func stopAccepting() {
        guard registered else { return }
        loop.unregister(descriptor, removeInterest: true)
        registered = false
    }

    /// Stops accepting and closes the socket (after a takeover the successor has its own
    /// copy of it; on shutdown, nothing more is accepted).
    func close() {
        stopAccepting()
        closed = true
        _ = Glibc.close(descriptor)
    }

    func acceptReady() {
        for _ in 0..<Self.acceptsPerTurn {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let accepted = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    identgate_accept4(descriptor, $0, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
            guard accepted >= 0 else {
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO, EPERM: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM: return pause(code)
                default:
                    driver.gateway.logger.error(
                        "accept failed", metadata: ["listener": "\(endpoint)", "error": "\(String(cString: strerror(code)))"])
                    return pause(code)
                }
            }
            guard let peer = IPEndpoint(storage) else {
                _ = Glibc.close(accepted)
                continue
            }
            if !episodeCheckPending, driver.gateway.acceptFailureEpisodeUnderWay { checkEpisodeEnd() }
            DirectConnection.start(
                client: accepted, peer: peer, listener: isWildcard ? nil : endpoint, loop: loop, driver: driver)
        }
    }

    /// Out of descriptors (or memory): no accepting for `AcceptPauseHandler.retryInterval`;
    /// the connection stays in the backlog meanwhile.
    private func pause(_ code: Int32) {
        driver.gateway.acceptFailed(errno: code, retryInterval: AcceptPauseHandler.retryInterval)
        guard !paused else { return }
        paused = true
        stopAccepting()
        loop.schedule(after: UInt64(AcceptPauseHandler.retryInterval.nanoseconds)) { [self] in
            paused = false
            startAccepting()
        }
    }

    private func checkEpisodeEnd() {
        episodeCheckPending = true
        loop.schedule(after: UInt64(AcceptPauseHandler.quietPeriod.nanoseconds)) { [self] in
            episodeCheckPending = false
            driver.gateway.endAcceptFailureEpisodeIfQuiet(quietPeriod: AcceptPauseHandler.quietPeriod)
        }
    }
}
