import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

/// Listening sockets the service manager passed (systemd socket activation: `LISTEN_PID`,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on, as sd_listen_fds(3) reads them,
/// written directly as sd_notify is). The gateway adopts them instead of binding: the
/// manager holds the port, so connections made while identgate starts or restarts wait in
/// the kernel's queue instead of being refused.
public struct ActivatedSockets: Sendable {
    public struct Socket: Sendable {
        public var descriptor: Int32
        /// `FileDescriptorName=` of the .socket unit; `metrics` is the metrics listener,
        /// any other name a SOCKS/HTTP one.
        public var name: String
        public var endpoint: IPEndpoint
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public var sockets: [Socket]

    /// The first descriptor passed (SD_LISTEN_FDS_START).
    static let firstDescriptor: Int32 = 3

    /// The sockets passed to this process, or nil when none were (not activated, or the
    /// variables are for another process: `LISTEN_PID` names the one they are for). The
    /// variables are removed, so that no child takes them for its own.
    public static func fromEnvironment() throws(Failure) -> ActivatedSockets? {
        guard let pid = value("LISTEN_PID"), let count = value("LISTEN_FDS") else { return nil }
        let names = value("LISTEN_FDNAMES")
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        guard Int32(pid) == getpid() else { return nil }
        guard let number = Int32(count), (1...64).contains(number) else {
            throw Failure(description: "socket activation: LISTEN_FDS=\(count) is not a number of sockets (1 to 64)")
        }
        let named = names?.split(separator: ":", omittingEmptySubsequences: false).map(String.init) ?? []
        var sockets: [Socket] = []
        for index in 0..<number {
            let descriptor = firstDescriptor + index
            let name = Int(index) < named.count ? named[Int(index)] : "unknown"
            sockets.append(try check(descriptor, name: name))
        }
        return ActivatedSockets(sockets: sockets)
    }

    private static func value(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// A listening TCP socket of IPv4 or IPv6, or a clear refusal; closed on exec.
    public static func check(_ descriptor: Int32, name: String) throws(Failure) -> Socket {
        let what = "socket activation: descriptor \(descriptor) ('\(name)')"
        guard fcntl(descriptor, F_GETFD) >= 0 else { throw Failure(description: "\(what) is not open") }
        var type: Int32 = 0
        var listening: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw Failure(description: "\(what) is not a socket")
        }
        guard type == Int32(SOCK_STREAM.rawValue) else {
            throw Failure(description: "\(what) is not a stream socket: use ListenStream= in the .socket unit")
        }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1 else {
            throw Failure(description: "\(what) is not listening (Accept=yes hands over connections, not listeners: use Accept=no)")
        }
        guard let endpoint = IPEndpoint.local(of: descriptor) else {
            throw Failure(description: "\(what) is not an IPv4 or IPv6 socket (a UNIX socket cannot serve SOCKS clients)")
        }
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        return Socket(descriptor: descriptor, name: name, endpoint: endpoint)
    }
}
