import NIOCore
import NIOPosix
import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

/// Resolves destination host names with getaddrinfo(3) on a thread pool.
///
/// NIO's own resolver runs getaddrinfo serially per event loop, so one slow name would
/// hold up every other. Here each lookup takes a pool thread and is bounded by a
/// time-out; the caller then decides and connects to exactly the addresses returned,
/// never resolving the name again (no gap for DNS rebinding between check and connect).
public struct HostResolver: Sendable {
    let threadPool: NIOThreadPool
    let timeout: TimeAmount

    public init(threadPool: NIOThreadPool, timeout: TimeAmount) {
        self.threadPool = threadPool
        self.timeout = timeout
    }

    /// The addresses in getaddrinfo's order; empty if the name does not resolve in time.
    public func resolve(_ name: String, on eventLoop: any EventLoop) -> EventLoopFuture<[IPAddress]> {
        let promise = eventLoop.makePromise(of: [IPAddress].self)
        let timer = eventLoop.scheduleTask(in: timeout) { promise.succeed([]) }
        threadPool.runIfActive(eventLoop: eventLoop) { Self.getaddrinfo(name) }
            .whenComplete { result in
                timer.cancel()
                promise.completeWith(result.flatMapError { _ in .success([]) })
            }
        return promise.futureResult
    }

    static func getaddrinfo(_ name: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard Glibc.getaddrinfo(name, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [IPAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let socketAddress = entry.pointee.ai_addr, let endpoint = IPEndpoint(sockaddr: socketAddress) {
                addresses.append(endpoint.address)
            }
            cursor = entry.pointee.ai_next
        }
        // getaddrinfo lists an address once per protocol unless told otherwise; keep the first.
        var seen = Set<IPAddress>()
        return addresses.filter { seen.insert($0).inserted }
    }
}
