import CGSSAPI
import NIOCore
import SOCKSWire

/// A GSS-API failure, with the library's own words.
struct GSSError: Error, CustomStringConvertible {
    let description: String
}

/// Runs a shim call that reports failure as -1 and a message in a buffer.
private func checked(_ call: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws(GSSError) {
    var message = [CChar](repeating: 0, count: 512)
    let status = message.withUnsafeMutableBufferPointer { buffer in
        buffer.baseAddress.map { call($0, buffer.count) } ?? -1
    }
    guard status == 0 else {
        throw GSSError(description: String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// Takes a buffer the shim allocated.
private func taken(_ pointer: UnsafeMutableRawPointer?, _ count: Int) -> [UInt8] {
    defer { identgate_gss_release_buffer(pointer) }
    guard let pointer, count > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: pointer, count: count))
}

/// The gateway's acceptor credentials: the keytab's keys for the service, read into
/// memory once (while still root: keytabs are root's), shared by every context.
/// MIT's credential handles are safe to share between threads.
public final class GSSAcceptor: @unchecked Sendable {
    fileprivate let handle: OpaquePointer
    /// The keys copied from the keytab.
    public let keys: Int
    public let service: String

    public init(keytab: String, service: String) throws {
        var handle: OpaquePointer?
        var keys: Int32 = 0
        try checked { identgate_gss_acceptor_create(keytab, service, &handle, &keys, $0, $1) }
        guard let handle else { throw GSSError(description: "no acceptor credentials") }
        self.handle = handle
        self.keys = Int(keys)
        self.service = service
    }

    deinit {
        identgate_gss_acceptor_free(handle)
    }
}

/// One client's GSS-API security context (RFC 1961): established step by step on the
/// thread pool (the replay cache is a file), then wrapping and unwrapping on the event
/// loop (memory only). Used by one thread at a time, handed over through futures.
final class GSSSecurityContext: @unchecked Sendable {
    private let acceptor: GSSAcceptor
    private var handle: OpaquePointer?

    init(acceptor: GSSAcceptor) {
        self.acceptor = acceptor
    }

    deinit {
        identgate_gss_context_free(handle)
    }

    /// One context-establishment step: the token for the client (may be empty), and
    /// whether the context is established.
    func accept(_ token: [UInt8]) throws -> (reply: [UInt8], complete: Bool) {
        var output: UnsafeMutableRawPointer?
        var count = 0
        var complete: Int32 = 0
        try checked { error, size in
            token.withUnsafeBytes {
                identgate_gss_accept(
                    acceptor.handle, &handle, $0.baseAddress, $0.count, &output, &count, &complete, error, size)
            }
        }
        return (taken(output, count), complete != 0)
    }

    /// The authenticated client (`alice@TEST.EXAMPLE`) and the mechanism (`krb5`).
    func peer() -> (principal: String, mechanism: String)? {
        guard let handle else { return nil }
        var principal = [CChar](repeating: 0, count: 1024)
        var mechanism = [CChar](repeating: 0, count: 128)
        let status = principal.withUnsafeMutableBufferPointer { name in
            mechanism.withUnsafeMutableBufferPointer { mech in
                identgate_gss_peer(handle, name.baseAddress, name.count, mech.baseAddress, mech.count)
            }
        }
        guard status == 0 else { return nil }
        func text(_ chars: [CChar]) -> String {
            String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return (text(principal), text(mechanism))
    }

    func wrap(_ message: UnsafeRawBufferPointer, confidential: Bool) throws -> [UInt8] {
        guard let handle else { throw GSSError(description: "no security context") }
        var output: UnsafeMutableRawPointer?
        var count = 0
        try checked {
            identgate_gss_wrap(handle, confidential ? 1 : 0, message.baseAddress, message.count, &output, &count, $0, $1)
        }
        return taken(output, count)
    }

    /// The message, and whether it came encrypted. `datagram`: lost and reordered tokens
    /// are accepted (UDP); on a stream they are refused.
    func unwrap(_ token: UnsafeRawBufferPointer, datagram: Bool = false) throws -> (message: [UInt8], confidential: Bool) {
        guard let handle else { throw GSSError(description: "no security context") }
        var output: UnsafeMutableRawPointer?
        var count = 0
        var confidential: Int32 = 0
        try checked {
            identgate_gss_unwrap(
                handle, datagram ? 1 : 0, token.baseAddress, token.count, &output, &count, &confidential, $0, $1)
        }
        return (taken(output, count), confidential != 0)
    }

    /// The largest message whose token fits in `tokenLimit` bytes.
    func wrapSizeLimit(confidential: Bool, tokenLimit: Int) -> Int? {
        guard let handle else { return nil }
        var limit = 0
        guard identgate_gss_wrap_size_limit(handle, confidential ? 1 : 0, tokenLimit, &limit) == 0, limit > 0 else {
            return nil
        }
        return limit
    }
}

/// Per-message protection as a session negotiated it (RFC 1961 §5): the context and
/// whether messages are encrypted. The stream's handler and a UDP association use it.
struct GSSPerMessage {
    let security: GSSSecurityContext
    let confidential: Bool

    /// A UDP datagram from the client: one whole `VER=1 MTYP=3 LEN TOKEN` message, its
    /// token the wrapped RFC 1928 header and data. nil if it is anything else or fails
    /// its check.
    func unwrapDatagram(_ datagram: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        var bytes = datagram
        guard let message = try? bytes.readGSSAPIMessage(), message.kind == .encapsulated, bytes.readableBytes == 0,
            let unwrapped = try? message.token.withUnsafeBytes({ try security.unwrap($0, datagram: true) }),
            unwrapped.confidential || !confidential
        else { return nil }
        var plain = allocator.buffer(capacity: unwrapped.message.count)
        plain.writeBytes(unwrapped.message)
        return plain
    }

    /// A datagram for the client, wrapped; nil if it does not fit in one message.
    func wrapDatagram(_ plain: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard let token = try? plain.readableBytesView.withUnsafeBytes({ try security.wrap($0, confidential: confidential) }),
            token.count <= GSSAPIMessage.largestToken
        else { return nil }
        var framed = allocator.buffer(capacity: token.count + 4)
        framed.writeGSSAPIMessage(GSSAPIMessage(.encapsulated, token: token))
        return framed
    }
}
