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

    /// Wraps `message` and appends it to `buffer` as one RFC 1961 message (`VER=1 MTYP=3
    /// LEN TOKEN`), copying the token once, from the library's buffer.
    func wrap(_ message: UnsafeRawBufferPointer, confidential: Bool, appendingTo buffer: inout ByteBuffer) throws {
        guard let handle else { throw GSSError(description: "no security context") }
        var output = identgate_gss_output()
        try checked {
            identgate_gss_wrap(handle, confidential ? 1 : 0, message.baseAddress, message.count, &output, $0, $1)
        }
        defer { identgate_gss_release_output(&output) }
        guard output.length <= GSSAPIMessage.largestToken else {
            throw GSSError(description: "a token of \(output.length) bytes does not fit in a message")
        }
        buffer.writeMultipleIntegers(UInt8(1), GSSAPIMessage.Kind.encapsulated.rawValue, UInt16(output.length))
        buffer.writeBytes(UnsafeRawBufferPointer(start: output.value, count: output.length))
    }

    /// The token of `message`, wrapped (for the protection-level reply).
    func wrap(_ message: UnsafeRawBufferPointer, confidential: Bool) throws -> [UInt8] {
        guard let handle else { throw GSSError(description: "no security context") }
        var output = identgate_gss_output()
        try checked {
            identgate_gss_wrap(handle, confidential ? 1 : 0, message.baseAddress, message.count, &output, $0, $1)
        }
        defer { identgate_gss_release_output(&output) }
        return Array(UnsafeRawBufferPointer(start: output.value, count: output.length))
    }

    /// Unwraps `token`, appending the message to `buffer`; returns whether it came
    /// encrypted. `datagram`: lost and reordered tokens are accepted (UDP); on a stream
    /// they are refused.
    func unwrap(_ token: UnsafeRawBufferPointer, datagram: Bool = false, appendingTo buffer: inout ByteBuffer) throws -> Bool {
        guard let handle else { throw GSSError(description: "no security context") }
        var output = identgate_gss_output()
        var confidential: Int32 = 0
        try checked {
            identgate_gss_unwrap(
                handle, datagram ? 1 : 0, token.baseAddress, token.count, &output, &confidential, $0, $1)
        }
        defer { identgate_gss_release_output(&output) }
        buffer.writeBytes(UnsafeRawBufferPointer(start: output.value, count: output.length))
        return confidential != 0
    }

    /// The message, and whether it came encrypted (for the protection-level message).
    func unwrap(_ token: UnsafeRawBufferPointer) throws -> (message: [UInt8], confidential: Bool) {
        var buffer = ByteBuffer()
        let confidential = try unwrap(token, appendingTo: &buffer)
        return (Array(buffer.readableBytesView), confidential)
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
        guard let (version, kind, length) = bytes.readMultipleIntegers(as: (UInt8, UInt8, UInt16).self), version == 1,
            kind == GSSAPIMessage.Kind.encapsulated.rawValue, bytes.readableBytes == Int(length)
        else { return nil }
        var plain = allocator.buffer(capacity: Int(length))
        guard let encrypted = try? bytes.withUnsafeReadableBytes({ try security.unwrap($0, datagram: true, appendingTo: &plain) }),
            encrypted || !confidential
        else { return nil }
        return plain
    }

    /// A datagram for the client, wrapped; nil if it does not fit in one message.
    func wrapDatagram(_ plain: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        var framed = allocator.buffer(capacity: plain.readableBytes + 64)
        guard (try? plain.withUnsafeReadableBytes({ try security.wrap($0, confidential: confidential, appendingTo: &framed) }))
            != nil
        else { return nil }
        return framed
    }
}
