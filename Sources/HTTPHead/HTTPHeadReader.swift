import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Reads an HTTP proxy request's head for the direct driver with NIOHTTP1's own decoder,
/// the one SwiftNIO's HTTP front door uses (no hand-written HTTP parser here either).
///
/// The decoder is a `ByteToMessageDecoder`: it reports what it parsed to the handler after
/// the one whose context it is given. The direct loop has no pipeline, so the reader keeps
/// one in an `EmbeddedChannel` (per loop, made and used on the loop's thread only: it is not
/// thread-safe), with a handler whose context the decoder is given and a collector after
/// it, and drives a fresh decoder per head as `ByteToMessageHandler` would: added, fed,
/// removed. After a CONNECT's head the decoder stops parsing for good and leaves the
/// bytes after the head unread in the buffer it was fed: the tunnel's first bytes.
/// (Adding and removing a `ByteToMessageHandler` per head instead cost three times as
/// much, measured with callgrind: docs/architecture.md.)
///
/// Every read starts from the head's first byte. A head nearly always arrives in one
/// segment; a client that sends it in pieces is handed to SwiftNIO after a few tries
/// (`DirectConnection.readHTTPHead`), so no head is parsed more than a few times.
///
/// A module of its own so that the HTTP fuzzer (Tests/Fuzz/FuzzHTTP) drives exactly this
/// reader without building the gateway.
public final class HTTPHeadReader {
    public enum Outcome {
        /// A CONNECT's whole head, and the bytes after it: the tunnel's first bytes (the
        /// decoder stops at a CONNECT's end, as SwiftNIO's front door's does).
        case connect(HTTPRequestHead, rest: ByteBuffer?)
        /// The whole head of a request with another method. The decoder reads on past it
        /// (a body, a pipelined request): what follows is not for this reader to say.
        case other(HTTPRequestHead)
        /// The head has not ended yet.
        case incomplete
        /// NIOHTTP1 refused it (malformed, too large): SwiftNIO's front door says why.
        case unreadable
    }

    private let channel = EmbeddedChannel()
    private let feeder = Feeder()
    private let collector = Collector()

    public init() {
        // Two handlers in a fresh channel: adding them cannot fail; if it did, every read
        // would find no context and report the head unreadable (SwiftNIO then reads it).
        try? channel.pipeline.syncOperations.addHandlers([feeder, collector])
    }

    deinit {
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    /// The head at the start of `bytes`, parsed from its first byte.
    public func read(_ bytes: ByteBuffer) -> Outcome {
        guard let context = feeder.context else { return .unreadable }
        let decoder = HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)
        decoder.decoderAdded(context: context)
        defer { decoder.decoderRemoved(context: context) }
        collector.reset()
        var buffer = bytes
        do {
            while buffer.readableBytes > 0, case .continue = try decoder.decode(context: context, buffer: &buffer) {}
        } catch {
            return .unreadable
        }
        guard let head = collector.head, collector.ended else { return collector.failed ? .unreadable : .incomplete }
        guard head.method == .CONNECT else { return .other(head) }
        // A CONNECT's decoder stopped at its end: nothing after it was parsed, or failed.
        return collector.failed ? .unreadable : .connect(head, rest: buffer.readableBytes > 0 ? buffer : nil)
    }

    /// Holds the context the decoder reports through.
    private final class Feeder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var context: ChannelHandlerContext?

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }
        func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }
    }

    /// Keeps what the decoder reported for the first head of the bytes: only the first (a
    /// pipelined request after it is never taken for it).
    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        var head: HTTPRequestHead?
        var ended = false
        var failed = false
        private var heads = 0

        func reset() {
            head = nil
            ended = false
            failed = false
            heads = 0
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let value):
                heads += 1
                if heads == 1 { head = value }
            case .body:
                break
            case .end:
                if heads == 1 { ended = true }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { failed = true }
    }
}
