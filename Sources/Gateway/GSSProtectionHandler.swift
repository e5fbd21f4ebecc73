import AuditLog
import NIOCore
import PrintableText
import SOCKSWire

/// RFC 1961 §5 per-message protection for one client connection, at the head of its
/// pipeline once integrity or confidentiality is granted: every message from the client
/// arrives as `VER=1 MTYP=3 LEN TOKEN` and is unwrapped before any other handler sees
/// it; everything written to the client (the SOCKS reply, relayed bytes) is wrapped, in
/// tokens of at most 65,535 bytes. The handlers behind it (negotiation, session, relay)
/// see plain bytes, so backpressure and half-close work as without it: reads, writes,
/// flushes and closes pass through.
///
/// A token that fails its check (altered, replayed, out of order, or unencrypted where
/// confidentiality was granted) or any other message ends the connection, logged and
/// recorded in the audit log.
final class GSSProtectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let security: GSSSecurityContext
    private let confidential: Bool
    private let gateway: GatewayContext
    /// The largest plain chunk whose token fits the two-octet length.
    private let chunk: Int
    private var cumulation: ByteBuffer?
    private var failed = false

    init(security: GSSSecurityContext, protection: GSSAPIProtection, gateway: GatewayContext) {
        self.security = security
        self.confidential = protection == .confidentiality
        self.gateway = gateway
        // Falls back to a size any mechanism's overhead leaves room for.
        self.chunk = security.wrapSizeLimit(confidential: protection == .confidentiality, tokenLimit: GSSAPIMessage.largestToken)
            ?? 60_000
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        unwrapMessages(&bytes, context: context)
    }

    /// Unwraps every complete message in `bytes` (and in what was kept from before) and
    /// passes the plain bytes on; keeps an incomplete message for the next read.
    func unwrapMessages(_ bytes: inout ByteBuffer, context: ChannelHandlerContext) {
        guard !failed else { return }
        if var kept = cumulation {
            // Released first, so that the append below writes in place, not into a copy.
            cumulation = nil
            kept.writeBuffer(&bytes)
            bytes = kept
        }
        var plain = context.channel.allocator.buffer(capacity: 0)
        do {
            // Each message is read in place: header, then the token unwrapped straight from
            // the buffer into `plain`.
            while let (version, type, length) = bytes.getMultipleIntegers(
                at: bytes.readerIndex, as: (UInt8, UInt8, UInt16).self)
            {
                guard version == 1, type == GSSAPIMessage.Kind.encapsulated.rawValue else {
                    if version == 1, type == GSSAPIMessage.Kind.abort.rawValue {
                        throw GSSError(description: "the client aborted")
                    }
                    throw GSSError(description: "a message of version \(version), type \(type) under per-message protection")
                }
                guard bytes.readableBytes >= 4 + Int(length) else { break }
                bytes.moveReaderIndex(forwardBy: 4)
                plain.reserveCapacity(minimumWritableBytes: Int(length))
                let token = bytes.readSlice(length: Int(length)) ?? ByteBuffer()
                let encrypted = try token.withUnsafeReadableBytes { token in
                    try security.unwrap(token, appendingTo: &plain)
                }
                guard encrypted || !confidential else {
                    throw GSSError(description: "an unencrypted message where confidentiality was granted")
                }
            }
        } catch {
            fail("\(error)", context: context)
            return
        }
        if bytes.readableBytes > 0 {
            // At most one message (64 KiB) is kept: moved to the front, the buffer stays
            // that size however long the stream.
            bytes.discardReadBytes()
            cumulation = bytes
        }
        if plain.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plain)) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plain = unwrapOutboundIn(data)
        guard !failed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var framed = context.channel.allocator.buffer(capacity: plain.readableBytes + 64 * (plain.readableBytes / chunk + 1))
        do {
            var rest = plain
            repeat {
                let piece = rest.readSlice(length: min(chunk, rest.readableBytes)) ?? ByteBuffer()
                try piece.withUnsafeReadableBytes { try security.wrap($0, confidential: confidential, appendingTo: &framed) }
            } while rest.readableBytes > 0
        } catch {
            promise?.fail(error)
            fail("\(error)", context: context)
            return
        }
        context.write(wrapOutboundOut(framed), promise: promise)
    }

    private func fail(_ reason: String, context: ChannelHandlerContext) {
        guard !failed else { return }
        failed = true
        cumulation = nil
        gateway.logger.notice(
            "GSS-API per-message protection failed; connection closed",
            metadata: ["client": "\(context.remoteAddressText)", "error": "\(DisplayText.escaped(reason))"])
        // Told to the handlers behind: the session's own end record (the relay's, or the
        // session handler's before the relay) carries the reason and the session, once.
        context.fireErrorCaught(GSSProtectionFailure(reason: reason))
        context.close(promise: nil)
    }
}

/// A wrapped message that did not verify or decrypt: the session ends with this reason.
struct GSSProtectionFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { "GSS-API per-message protection failed: \(reason)" }
}
