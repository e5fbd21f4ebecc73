import HTTPHead
import HTTPProxyWire
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Hands each request head the decoder reads to the proxy's own readers, as
/// `HTTPFrontHandler` does.
final class HeadReader: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart

    /// Set before the decoder leaves: what it forwards then are raw bytes, not request parts.
    var decoderLeft = false
    /// The first head the decoder read, and whether its request ended.
    var firstHead: HTTPRequestHead?
    var firstEnded = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decoderLeft else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if firstHead == nil { firstHead = head }
            readTarget(of: head)
        case .body:
            break
        case .end:
            if firstHead != nil { firstEnded = true }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A head the parser refuses: the gateway answers 400 and closes (HTTPFrontHandler).
    }
}

func readTarget(of head: HTTPRequestHead) {
    _ = try? ProxyRequestTarget.parse(method: head.method.rawValue, target: head.uri)
    for value in head.headers["Proxy-Authorization"] {
        _ = try? BasicCredentials.parse(value)
    }
}

/// The direct driver's reader, one for the whole run as a loop keeps one: each input also
/// checks that a head read after any earlier input is read right.
nonisolated(unsafe) let directReader = HTTPHeadReader()

/// libFuzzer entry: arbitrary bytes as what an HTTP proxy client sends first, through
/// NIOHTTP1's decoder (as the gateway configures it) into the target and credential
/// readers. Nothing may trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let channel = EmbeddedChannel()
    let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
    let reader = HeadReader()
    guard (try? channel.pipeline.syncOperations.addHandlers([decoder, reader])) != nil else { return 0 }
    var buffer = channel.allocator.buffer(capacity: size)
    buffer.writeBytes(UnsafeBufferPointer(start: data, count: size))
    _ = try? channel.writeInbound(buffer)
    // The decoder leaving releases what it held after a CONNECT.
    reader.decoderLeft = true
    channel.pipeline.syncOperations.removeHandler(decoder, promise: nil)
    _ = try? channel.finish(acceptAlreadyClosed: true)
    // The direct driver's reader (HTTPHeadReader) sees the same first head as the front
    // door, and what it leaves after the head is a part of the input.
    switch directReader.read(buffer) {
    case .connect(let head, let rest):
        readTarget(of: head)
        precondition(reader.firstHead == head && reader.firstEnded, "the direct reader and the front door read different heads")
        if let rest {
            precondition(rest.readableBytes < size, "more left after the head than was sent")
            precondition(
                rest.readableBytesView.elementsEqual(buffer.readableBytesView.suffix(rest.readableBytes)),
                "what is left after the head is not the input's tail")
        }
    case .other(let head):
        precondition(reader.firstHead == head && reader.firstEnded, "the direct reader and the front door read different heads")
    case .incomplete, .unreadable:
        break
    }
    return 0
}

/// SwiftPM links an executable's entry point as `fuzz_http_main`; it hands over to
/// libFuzzer's driver with the harness above.
@_cdecl("fuzz_http_main")
public func fuzzHTTPMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        guard let data else { return 0 }
        return fuzzHTTP(data, size)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
