import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Reads an HTTP proxy request's head for the direct driver with NIOHTTP1's own decoder,
/// the one SwiftNIO's HTTP front door uses (no hand-written HTTP parser here either).
/// The decoder is a pipeline handler and the direct loop has no pipeline, so it runs in an
/// `EmbeddedChannel`: one per loop, made and used on the loop's thread only (it is not
/// thread-safe), a fresh decoder for every head (docs/architecture.md).
///
/// Every read starts from the head's first byte. A head nearly always arrives in one
/// segment; a client that sends it in pieces is handed to SwiftNIO after a few tries
/// (`DirectConnection.readHTTPHead`), so no head is parsed more than a few times.
final class HTTPHeadReader {
    enum Outcome {
        /// The whole head, and the bytes after it (a CONNECT's tunnel starts there).
        case head(HTTPRequestHead, rest: ByteBuffer?)
        /// The head has not ended yet.
        case incomplete
        /// NIOHTTP1 refused it (malformed, too large): SwiftNIO's front door says why.
        case unreadable
    }

    /// Taken while a head is read; put back only when nothing of that read is left in it.
    private var channel: EmbeddedChannel?

    deinit {
        _ = try? channel?.finish(acceptAlreadyClosed: true)
    }

    func read(_ bytes: ByteBuffer) -> Outcome {
        let channel = self.channel ?? EmbeddedChannel()
        self.channel = nil
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
        do {
            // Named: a generated name costs more than the rest of adding it.
            try channel.pipeline.syncOperations.addHandler(decoder, name: "head")
            try channel.writeInbound(bytes)
            var head: HTTPRequestHead?
            var ended = false
            while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let value): head = value
                case .body: break
                case .end: ended = true
                }
            }
            // Leaving, the decoder passes on what it held after the head (or all of it).
            channel.pipeline.syncOperations.removeHandler(decoder, promise: nil)
            channel.embeddedEventLoop.run()
            var rest: ByteBuffer?
            while var more = try channel.readInbound(as: ByteBuffer.self) {
                if rest == nil { rest = more } else { rest?.writeBuffer(&more) }
            }
            try channel.throwIfErrorCaught()
            self.channel = channel
            guard let head, ended else { return .incomplete }
            return .head(head, rest: rest?.readableBytes == 0 ? nil : rest)
        } catch {
            // The decoder's error (or one on its way out): this channel is not used again.
            _ = try? channel.finish(acceptAlreadyClosed: true)
            return .unreadable
        }
    }
}
