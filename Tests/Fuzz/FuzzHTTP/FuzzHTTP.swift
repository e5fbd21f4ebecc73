import HTTPProxyWire
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Hands each request head the decoder reads to the proxy's own readers, as
/// `HTTPFrontHandler` does.
final class HeadReader: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a CONNECT the decoder forwards raw bytes: not a request part.
        guard let part = try? data.tryAs(type: HTTPServerRequestPart.self), case .head(let head) = part else { return }
        _ = try? ProxyRequestTarget.parse(method: head.method.rawValue, target: head.uri)
        for value in head.headers["Proxy-Authorization"] {
            _ = try? BasicCredentials.parse(value)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// libFuzzer entry: arbitrary bytes as what an HTTP proxy client sends first, through
/// NIOHTTP1's decoder (as the gateway configures it) into the target and credential
/// readers. Nothing may trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let channel = EmbeddedChannel()
    let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
    guard (try? channel.pipeline.syncOperations.addHandlers([decoder, HeadReader()])) != nil else { return 0 }
    var buffer = channel.allocator.buffer(capacity: size)
    buffer.writeBytes(UnsafeBufferPointer(start: data, count: size))
    _ = try? channel.writeInbound(buffer)
    // The decoder leaving releases what it held after a CONNECT.
    _ = try? channel.pipeline.syncOperations.removeHandler(decoder)
    _ = try? channel.finish()
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
