import HTTPProxyWire
import NIOCore
import NIOHTTP1

/// The destination's side of forwarding: its response parts, its reads and writes and its
/// end, called by `UpstreamResponseHandler` on the client connection's event loop.
extension HTTPForwardHandler {
    /// The exchange being forwarded, if `id` is it and it has not ended: a destination's
    /// close that the exchange's own end caused (synchronously, on this loop) finds none.
    private func live(_ id: ObjectIdentifier) -> ForwardedExchange? {
        guard case .forwarding(let exchange) = state, ObjectIdentifier(exchange) == id, !exchange.isOver else { return nil }
        return exchange
    }

    /// Returns false when no exchange takes the part (the caller closes that connection).
    @discardableResult
    func responsePart(_ part: HTTPClientResponsePart, from id: ObjectIdentifier) -> Bool {
        guard let context = clientContext, let exchange = live(id) else { return false }
        switch part {
        case .head(let head):
            guard head.status.code >= 200 else { return true }  // 1xx: the continue was the proxy's to give
            exchange.responseStatus = head.status
            var fields = head.headers.map { (name: $0.name, value: $0.value) }
            let bodiless = exchange.head.method == .HEAD || head.status.code == 204 || head.status.code == 304
            if bodiless { fields.removeAll { $0.name.lowercased() == "transfer-encoding" } }
            guard ForwardedHeaders.framingIsForwardable(fields) else {
                failUpstream(exchange, reason: "the destination's Transfer-Encoding cannot be forwarded", context: context)
                return true
            }
            let framed = fields.contains { ["content-length", "transfer-encoding"].contains($0.name.lowercased()) }
            exchange.responseEndsAtClose = !bodiless && !framed
            exchange.destinationCloses = ForwardedHeaders.closesAfter(fields, minorVersion: head.version.minor)
            // A body that ends at the destination's close ends the client's connection too.
            if exchange.responseEndsAtClose { closeAfterExchange = true }
            var out = HTTPResponseHead(
                version: .init(major: 1, minor: exchange.clientMinorVersion), status: head.status,
                headers: HTTPHeaders(ForwardedHeaders.forwarded(fields, via: via)))
            if closeAfterExchange { out.headers.replaceOrAdd(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(out)), promise: nil)
        case .body(let bytes):
            exchange.bytesToClient += UInt64(bytes.readableBytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil)
        case .end(let trailers):
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
            completeExchange(exchange, reason: "response complete", context: context)
        }
        return true
    }

    func upstreamReadComplete(from id: ObjectIdentifier) {
        guard let context = clientContext, let exchange = live(id) else { return }
        context.flush()
        if context.channel.isWritable { exchange.upstream?.read() }
    }

    func upstreamWritabilityChanged(from id: ObjectIdentifier) {
        guard let context = clientContext, live(id) != nil else { return }
        resumeClientReads(context: context)
    }

    func upstreamClosed(from id: ObjectIdentifier, error: (any Error)?, channel: any Channel) {
        if let kept = keptUpstream, kept === channel { keptUpstream = nil }
        guard let context = clientContext, let exchange = live(id) else { return }
        if exchange.responseEndsAtClose, exchange.responseStatus != nil, error == nil {
            // The destination framed its response by closing: that was its end.
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            return completeExchange(exchange, reason: "response complete", context: context)
        }
        failUpstream(exchange, reason: "the destination closed the connection before its response was complete", context: context)
    }

    /// The destination broke off: 502 if the client has heard nothing yet, else the client
    /// connection ends (a response cut short cannot be mended).
    private func failUpstream(_ exchange: ForwardedExchange, reason: String, context: ChannelHandlerContext) {
        gateway.logger.debug("forwarded request broken off", metadata: ["reason": "\(reason)", "session": "\(exchange.setup.id)"])
        if exchange.responseStatus == nil {
            return answer(.badGateway, exchange: exchange, reason: "failed: \(reason)", context: context)
        }
        end(exchange, reason: reason)
        state = .closed
        context.close(promise: nil)
    }
}
