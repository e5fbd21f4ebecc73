import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

/// BIND's listening socket: accepts exactly one inbound connection, on the event loop
/// of the client's channel so that the relay pair shares it. The caller closes the
/// listener on every path (peer arrived, time-out, client gone).
enum BindListener {
    /// The listening channel, and the future of the first connection it accepts.
    static func listen(on address: IPAddress, eventLoop: any EventLoop) -> EventLoopFuture<
        (any Channel, EventLoopFuture<any Channel>)
    > {
        let peer = eventLoop.makePromise(of: (any Channel).self)
        let taken = NIOLockedValueBox(false)
        return ServerBootstrap(group: eventLoop)
            .serverChannelOption(.backlog, value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { child in
                // Only the first connection is the peer; any other is closed at once.
                guard
                    taken.withLockedValue({ first in
                        defer { first = true }
                        return !first
                    })
                else {
                    return child.close()
                }
                // Handed over once active: by then the bootstrap has registered it and
                // applied its options, so the relay's settings are not overwritten.
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ActivationHandler(peer))
                }
            }
            .bind(to: SocketAddress(IPEndpoint(address: address, port: 0)))
            .map { listener in
                // If the listener closes before a peer came, nobody waits for one.
                listener.closeFuture.whenComplete { _ in peer.fail(ChannelError.ioOnClosedChannel) }
                return (listener, peer.futureResult)
            }
    }
}

/// Completes a promise with its channel when the channel becomes active, then leaves.
private final class ActivationHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<any Channel>

    init(_ promise: EventLoopPromise<any Channel>) {
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        promise.succeed(context.channel)
        context.fireChannelActive()
    }
}

/// The local address the kernel would use to reach a destination: connect a UDP socket
/// (which sends nothing) and read its name. For BIND, the gateway's "outside" address.
enum RouteSource {
    static func address(toward destination: IPAddress) -> IPAddress? {
        let target = IPEndpoint(address: destination, port: 9).posixAddress
        let family = destination.isIPv6 ? AF_INET6 : AF_INET
        let socket = Glibc.socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard socket >= 0 else { return nil }
        defer { close(socket) }
        let connected = target.withSockAddr { connect(socket, $0, $1) }
        guard connected == 0 else { return nil }
        return IPEndpoint.local(of: socket)?.address
    }
}

/// Whether an address belongs to this host: a UDP socket can be bound to it (binding to
/// an address that is not local fails with EADDRNOTAVAIL; nothing is sent).
enum LocalAddress {
    static func isAssigned(_ address: IPAddress) -> Bool {
        let socket = Glibc.socket(address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard socket >= 0 else { return false }
        defer { close(socket) }
        return IPEndpoint(address: address, port: 0).posixAddress.withSockAddr { bind(socket, $0, $1) } == 0
    }
}

extension LocalAddress {
    /// The IPv4 and IPv6 addresses of a network interface (`eth0`, `lo`), by getifaddrs.
    static func ofInterface(_ name: String) -> [IPAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ifa_addr, String(cString: current.pointee.ifa_name) == name,
                let endpoint = IPEndpoint(sockaddr: address), !addresses.contains(endpoint.address)
            {
                addresses.append(endpoint.address)
            }
            entry = current.pointee.ifa_next
        }
        return addresses
    }
}
