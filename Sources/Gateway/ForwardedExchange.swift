import HTTPProxyWire
import NIOCore
import NIOHTTP1

/// One forwarded request and its response, on a client connection that carries several
/// in turn (`HTTPForwardHandler`): its session, its destination connection, the parts
/// waiting for it, and what its session-end record says.
final class ForwardedExchange {
    let setup: SessionSetup
    let head: HTTPRequestHead
    /// Completed when the exchange ends: gives back its place under the limits.
    let ended: EventLoopPromise<Void>
    let started = ContinuousClock.now
    var connector: UpstreamConnector?
    var upstream: (any Channel)?
    var parent: String?
    /// Parts of the request that came before the destination was connected.
    var waiting: [HTTPServerRequestPart] = []
    /// `waiting` holds the request's end.
    var waitingComplete = false
    var requestDone = false
    var responseStatus: HTTPResponseStatus?
    var bytesFromClient: UInt64 = 0
    var bytesToClient: UInt64 = 0
    /// The response is framed by the destination closing its connection.
    var responseEndsAtClose = false
    /// The destination said it closes after this response (Connection: close, HTTP/1.0).
    var destinationCloses = false
    var allowed = false
    /// The HTTP/1.x minor version the client spoke, for the response.
    let clientMinorVersion: Int
    private(set) var isOver = false

    init(setup: SessionSetup, head: HTTPRequestHead, clientMinorVersion: Int, ended: EventLoopPromise<Void>) {
        self.setup = setup
        self.head = head
        self.clientMinorVersion = clientMinorVersion
        self.ended = ended
    }

    /// Marks the exchange over; false if it was already.
    func over() -> Bool {
        defer { isOver = true }
        return !isOver
    }
}

/// The destination's side of a forwarded request: response parts, its reads and writes
/// and its end go to the `HTTPForwardHandler` of the client connection.
final class UpstreamResponseHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let forwarder: NIOLoopBound<HTTPForwardHandler>
    /// The exchange this connection serves now (a kept connection serves several in turn).
    var exchange: ObjectIdentifier
    private var error: (any Error)?

    init(forwarder: NIOLoopBound<HTTPForwardHandler>, exchange: ObjectIdentifier) {
        self.forwarder = forwarder
        self.exchange = exchange
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Bytes from a kept connection that serves no request now: it is not to be trusted.
        guard forwarder.value.responsePart(unwrapInboundIn(data), from: exchange) else { return context.close(promise: nil) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        forwarder.value.upstreamReadComplete(from: exchange)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        forwarder.value.upstreamWritabilityChanged(from: exchange)
    }

    func channelInactive(context: ChannelHandlerContext) {
        forwarder.value.upstreamClosed(from: exchange, error: error, channel: context.channel)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.error = error
        context.close(promise: nil)
    }
}

extension HTTPHeaders {
    /// Header fields as the proxy's pure code lists them, in order.
    init(_ fields: [ForwardedHeaders.Field]) {
        self.init(fields.map { ($0.name, $0.value) })
    }
}
