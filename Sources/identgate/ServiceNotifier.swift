import Synchronization
#if canImport(Glibc)
    import Glibc
#endif

/// systemd's readiness protocol (sd_notify(3)): state lines in datagrams to the socket
/// `NOTIFY_SOCKET` names. Connected at start, while still root, so that the messages
/// after the privilege drop need no permission on the socket's file. Without
/// `NOTIFY_SOCKET` (not under systemd) every call does nothing.
final class ServiceNotifier: Sendable {
    private let descriptor: Int32?
    /// `identgate upgrade`'s readiness pipe (IDENTGATE_READY_FD): told "serving" once, at
    /// the first READY=1, then closed.
    private let upgradeReady: Mutex<Int32?>
    /// `WATCHDOG_USEC`, when it is meant for this process: how often to say "alive".
    let watchdogInterval: Duration?

    init() {
        let environment = { (name: String) in getenv(name).map { String(cString: $0) } }
        let ready = environment("IDENTGATE_READY_FD").flatMap(Int32.init).flatMap { fcntl($0, F_GETFD) >= 0 ? $0 : nil }
        unsetenv("IDENTGATE_READY_FD")
        if let ready { _ = fcntl(ready, F_SETFD, FD_CLOEXEC) }
        upgradeReady = Mutex(ready)
        if let pid = environment("WATCHDOG_PID").flatMap(Int32.init), pid != getpid() {
            watchdogInterval = nil
        } else {
            watchdogInterval = environment("WATCHDOG_USEC").flatMap(Int64.init).flatMap { $0 > 0 ? .microseconds($0) : nil }
        }
        guard let path = environment("NOTIFY_SOCKET"), !path.isEmpty, path.utf8.count < 108,
            path.hasPrefix("/") || path.hasPrefix("@")
        else {
            descriptor = nil
            return
        }
        let socket = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else {
            descriptor = nil
            return
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // '@' names an abstract socket: its name starts with a NUL byte.
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socket, $0, length) }
        }
        guard connected == 0 else {
            close(socket)
            descriptor = nil
            return
        }
        descriptor = socket
    }

    /// Sends `READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…` lines.
    func notify(_ lines: String...) {
        if lines.contains("READY=1"), let ready = upgradeReady.withLock({ ready in
            defer { ready = nil }
            return ready
        }) {
            var serving = Array("serving\n".utf8)
            _ = Glibc.write(ready, &serving, serving.count)
            close(ready)
        }
        guard let descriptor else { return }
        let message = Array(lines.joined(separator: "\n").utf8)
        _ = message.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// `RELOADING=1` with the monotonic time systemd asks for (microseconds).
    func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        notify("RELOADING=1", "MONOTONIC_USEC=\(Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000)")
    }
}
