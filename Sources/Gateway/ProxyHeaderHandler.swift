import AuditLog
import Logging
import NIOCore
import NetAddress
import ProxyProtocol

/// The real client behind a load balancer, as its PROXY protocol header gave it; sent
/// to the `NegotiationHandler` as a user event before the client's first byte.
struct ProxiedConnection {
    /// The client and the address it connected to (the balancer's front end); nil for
    /// the balancer's own connections (LOCAL: health checks).
    var client: IPEndpoint?
    var frontEnd: IPEndpoint?
    /// The connection's own peer: the balancer.
    var balancer: IPEndpoint
}

/// First in the pipeline of a connection from a `--proxy-protocol-from` network, where a
/// PROXY header (v1 or v2) is required: reads it (bounded by the protocol's maximum and
/// the negotiation deadline that already runs), tells the negotiation who the client
/// is, passes on the bytes after it, and leaves. No header, a malformed one, or one that
/// names no client for a relayed connection: the connection is closed.
final class ProxyHeaderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let repeated: RepeatedEvents
    private var received: ByteBuffer?

    init(repeated: RepeatedEvents) {
        self.repeated = repeated
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        var buffer = received ?? context.channel.allocator.buffer(capacity: bytes.readableBytes)
        buffer.writeBuffer(&bytes)
        received = buffer
        switch ProxyHeader.parse(buffer.readableBytesView) {
        case .needMore:
            return
        case .invalid(let reason):
            refuse(reason, context: context)
        case .header(let header, let length):
            guard let balancer = context.channel.remoteAddress?.ipEndpoint else { return context.close(promise: nil) }
            if header.command == .proxy, header.source == nil {
                // UNKNOWN or a non-TCP family: the client is unknown, and the balancer's own
                // address must not stand in for it in the policy's source rules.
                return refuse("the PROXY header names no client address", context: context)
            }
            buffer.moveReaderIndex(forwardBy: length)
            received = nil
            context.fireUserInboundEventTriggered(
                ProxiedConnection(client: header.source, frontEnd: header.destination, balancer: balancer))
            if buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            // Gone before a whole header: nothing to serve.
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func refuse(_ reason: String, context: ChannelHandlerContext) {
        repeated.occurred(
            .refusedProxyHeader, on: context.eventLoop, metadata: ["peer": "\(context.remoteAddressText)", "reason": "\(reason)"])
        received = nil
        context.close(promise: nil)
    }
}
