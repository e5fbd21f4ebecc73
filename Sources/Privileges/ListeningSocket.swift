import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP socket bound and listening, made with the system calls directly so that it can
/// be made while root and before any thread exists; SwiftNIO adopts it later
/// (`ServerBootstrap.withBoundSocket`).
public struct ListeningSocket: Sendable {
    public var descriptor: Int32
    public var endpoint: IPEndpoint

    /// A socket already listening (one the service manager passed).
    public init(descriptor: Int32, endpoint: IPEndpoint) {
        self.descriptor = descriptor
        self.endpoint = endpoint
    }

    /// Up to `count` sockets on one address with SO_REUSEPORT, one per event loop: the
    /// kernel spreads new connections over them, and each loop accepts its own, so no
    /// connection is handed from one thread to another (docs/architecture.md). Port 0
    /// becomes the port the first socket got. Only sockets of the same user (root,
    /// before the drop) can join the group. If the first cannot be bound, that is the
    /// error; if a later one cannot (the port is shared with a socket that does not allow
    /// it), the gateway serves with those it has.
    public static func open(_ endpoint: IPEndpoint, count: Int, backlog: Int32 = 1024) throws -> [ListeningSocket] {
        let first = try open(endpoint, reusePort: count > 1, backlog: backlog)
        var sockets = [first]
        while sockets.count < count, let more = try? open(first.endpoint, reusePort: true, backlog: backlog) {
            sockets.append(more)
        }
        return sockets
    }

    public static func open(_ endpoint: IPEndpoint, reusePort: Bool = false, backlog: Int32 = 1024) throws -> ListeningSocket {
        let family = endpoint.address.isIPv6 ? AF_INET6 : AF_INET
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw PrivilegeError.errno("socket for \(endpoint)") }
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort {
            setsockopt(descriptor, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if family == AF_INET6 {
            // `[::]` means IPv6 only here; list 0.0.0.0 as well to serve IPv4.
            setsockopt(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let bound = endpoint.posixAddress.withSockAddr { bind(descriptor, $0, $1) }
        guard bound == 0, listen(descriptor, backlog) == 0 else {
            let error = PrivilegeError.errno("cannot listen on \(endpoint)")
            close(descriptor)
            throw error
        }
        return ListeningSocket(descriptor: descriptor, endpoint: IPEndpoint.local(of: descriptor) ?? endpoint)
    }

}
