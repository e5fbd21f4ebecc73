import CDirectIO
import NetAddress
import PosixEndpoint
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// The outbound connect of a direct connection's CONNECT: a non-blocking socket from the
/// `--external` address of the destination's family, under `--connect-timeout`, as
/// `OutboundConnect` makes it for SwiftNIO; its outcome goes back to the `ConnectSession`.
extension DirectConnection {
    func connect(to destination: IPEndpoint) {
        timing = ConnectTiming(gateway.metrics)
        let source: IPAddress?
        switch gateway.configuration.outboundSource(toward: destination.address) {
        case .kernel: source = nil
        case .address(let address): source = address
        case .none: return connectFailed(.networkUnreachable)
        }
        let family = destination.address.isIPv6 ? AF_INET6 : AF_INET
        let socket = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { return connectFailed(SOCKSRequestFailure(errno: errno)) }
        var one: Int32 = 1
        setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let source {
            let bound = IPEndpoint(address: source, port: 0).posixAddress.withSockAddr { bind(socket, $0, $1) }
            guard bound == 0 else {
                let code = errno
                close(socket)
                return connectFailed(SOCKSRequestFailure(errno: code))
            }
        }
        let result = destination.posixAddress.withSockAddr { Glibc.connect(socket, $0, $1) }
        let code = errno
        guard result == 0 || code == EINPROGRESS else {
            close(socket)
            return connectFailed(SOCKSRequestFailure(errno: code))
        }
        guard loop.register(socket, as: .outbound(self), events: DirectLoop.connectionEvents) != nil else {
            close(socket)
            return connectFailed(.generalFailure)
        }
        outbound = socket
        deadline = loop.now &+ UInt64(gateway.configuration.connectTimeout.nanoseconds)
        loop.schedule(self)
        if result == 0 { connected() }
    }

    func connectProgressed(_ events: UInt32) {
        if events & EPOLLIN.rawValue != 0 { outboundReadable = true }
        if events & DirectLoop.hangupEvents != 0 { outboundHungUp = true }
        guard events & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 else { return }
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(outbound, SOL_SOCKET, SO_ERROR, &code, &length)
        if code != 0 { return connectFailed(SOCKSRequestFailure(errno: code)) }
        if events & EPOLLOUT.rawValue == 0 { return connectFailed(SOCKSRequestFailure(errno: ECONNREFUSED)) }
        connected()
    }

    func connected() {
        timing?.connected()
        if let action = session?.connected() { perform(action) }
    }

    func connectFailed(_ failure: SOCKSRequestFailure) {
        timing?.failed(failure)
        closeOutbound()
        if let action = session?.connectFailed(failure) { perform(action) }
    }
}
