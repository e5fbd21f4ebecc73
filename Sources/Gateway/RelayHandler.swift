import Glibc
import NIOCore
import NIOExtras
import Prometheus

/// One half of a relay: a pair of these, one in each channel's pipeline, passes bytes
/// between the client and the destination (the "glue" pattern of NIO's connect-proxy
/// example). Both channels live on the same event loop, so the pair needs no locks.
///
/// - Backpressure: a side reads only while its partner's channel is writable; when the
///   partner's write buffer passes its high-water mark, reading stops until it drains.
///   Memory per relay is bounded by the two write buffers' high-water marks.
/// - Half-close: EOF on one side becomes a shutdown of the partner's output, after
///   every byte already written to the partner has gone out.
/// - Failure: an error on either side closes both at once.
final class RelayHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: RelayHandler?
    private var context: ChannelHandlerContext?
    private var readPending = false
    /// Bytes this side read from its own socket and handed to the partner.
    private(set) var bytesRead: UInt64 = 0
    /// Bytes the partner read (what this side was sent), while the partner is known.
    var partnerBytesRead: UInt64 { partner?.bytesRead ?? partnerBytesAtRemoval }
    private var partnerBytesAtRemoval: UInt64 = 0
    /// Why the session ended, for the audit log.
    private(set) var closeReason = "closed"
    private let onClose: ((RelayHandler) -> Void)?
    /// The metrics' counter of the bytes this side reads (`--metrics-listen`), if on.
    private let readCounter: Counter?

    private init(onClose: ((RelayHandler) -> Void)?, readCounter: Counter?) {
        self.onClose = onClose
        self.readCounter = readCounter
    }

    /// A matched pair: the first goes into the client's channel, the second into the
    /// destination's. `onClientClose` runs once when the client's channel closes.
    /// `counting`: the metrics' counters of the bytes each way, added to as they are read.
    static func matchedPair(
        counting counters: (fromClient: Counter, toClient: Counter)? = nil, onClientClose: ((RelayHandler) -> Void)? = nil
    ) -> (client: RelayHandler, destination: RelayHandler) {
        let client = RelayHandler(onClose: onClientClose, readCounter: counters?.fromClient)
        let destination = RelayHandler(onClose: nil, readCounter: counters?.toClient)
        client.partner = destination
        destination.partner = client
        return (client, destination)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Bytes this side's peer sent before the relay began (a client's bytes after its
    /// request, read during the negotiation), passed on by the session as the relay starts:
    /// counted as read here, for the session-end record and the metrics.
    func countEarly(_ count: Int) {
        bytesRead &+= UInt64(count)
        readCounter?.increment(by: Int64(count))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        partnerBytesAtRemoval = partner?.bytesRead ?? partnerBytesAtRemoval
        self.context = nil
        self.partner = nil
    }

    // MARK: Called by the partner

    private func partnerWrite(_ data: NIOAny) {
        context?.write(data, promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    /// The partner's peer finished sending: finish ours once everything queued is out.
    /// (Closing the output with writes pending would, on a channel whose input is
    /// already shut, escalate to a full close and drop them.)
    private func partnerReachedEOF() {
        guard let context else { return }
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success: context.close(mode: .output, promise: nil)
            case .failure: context.close(promise: nil)
            }
        }
    }

    /// The partner's channel closed: deliver what is queued, then close.
    private func partnerClosed() {
        guard let context else { return }
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    private func noteFailure(_ error: any Error) {
        closeReason = "destination \(Self.describe(error))"
    }

    private func partnerFailed() {
        context?.close(promise: nil)
    }

    private func partnerBecameWritable() {
        if readPending {
            readPending = false
            context?.read()
        }
    }

    private var isWritable: Bool {
        context?.channel.isWritable ?? false
    }

    // MARK: Pipeline events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let count = unwrapInboundIn(data).readableBytes
        bytesRead &+= UInt64(count)
        readCounter?.increment(by: Int64(count))
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClose?(self)
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            partner?.partnerReachedEOF()
        case is IdleStateHandler.IdleStateEvent:
            // Nothing moved either way for the idle time-out: end the session.
            closeReason = "idle timeout"
            partner?.partnerFailed()
            context.close(promise: nil)
        case is ChannelShouldQuiesceEvent:
            // Shutting down: a running relay may finish within the grace period.
            break
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        closeReason = error is GSSProtectionFailure ? "\(error)" : "client \(Self.describe(error))"
        partner?.noteFailure(error)
        partner?.partnerFailed()
        context.close(promise: nil)
    }

    /// An error in the audit record's words: what the socket said (`reset the
    /// connection`), never the name of the call that failed.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? IOError else { return "error: \(error)" }
        return describe(errno: error.errnoCode)
    }

    /// As `describe`, from the errno of a system call (the direct driver's).
    static func describe(errno code: Int32) -> String {
        switch code {
        case ECONNRESET: return "reset the connection"
        case ETIMEDOUT: return "connection timed out"
        case EPIPE: return "closed the connection while data was being sent"
        default: return "connection failed: \(String(cString: strerror(code)))"
        }
    }

    func read(context: ChannelHandlerContext) {
        if partner?.isWritable ?? false {
            context.read()
        } else {
            readPending = true
        }
    }
}
