import NIOCore
import NIOPosix
import NetAddress
import SOCKSWire

/// The direct outbound connect every session that reaches a destination makes (CONNECT,
/// HTTP CONNECT, forwarded HTTP requests): from the `--external` address of the
/// destination's family, under `--connect-timeout`, with the relay's options and reading
/// off until the caller's handlers are in place (bytes read earlier would be lost).
enum OutboundConnect {
    /// `--external` has no address of the destination's family: nothing may leave.
    struct NoSourceAddress: Error {}

    /// `attempting` sees the channel before it connects (to close it if the session ends
    /// meanwhile); throwing from it abandons the attempt.
    static func open(
        to destination: IPEndpoint, gateway: GatewayContext, on eventLoop: any EventLoop,
        attempting: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        var bootstrap = ClientBootstrap(group: eventLoop)
        switch gateway.configuration.outboundSource(toward: destination.address) {
        case .kernel:
            break
        case .address(let source):
            bootstrap = bootstrap.bind(to: SocketAddress(IPEndpoint(address: source, port: 0)))
        case .none:
            return eventLoop.makeFailedFuture(NoSourceAddress())
        }
        return bootstrap
            .connectTimeout(gateway.configuration.connectTimeout)
            .channelInitializer { channel in
                // Set here rather than with `channelOption`, which applies each option
                // through a future of its own: this is on every connection's path.
                channel.eventLoop.makeCompletedFuture {
                    try attempting(channel)
                    let options = channel.syncOptions
                    try options?.setOption(.allowRemoteHalfClosure, value: true)
                    try options?.setOption(.recvAllocator, value: GatewayContext.relayReceiveAllocator)
                    try options?.setOption(.autoRead, value: false)
                }
            }
            .connect(to: SocketAddress(destination))
    }

    /// The failure a client hears for a connect error.
    static func failure(_ error: any Error) -> SOCKSRequestFailure {
        error is NoSourceAddress ? .networkUnreachable : SOCKSRequestFailure(connectError: error)
    }
}
