import HTTPProxyWire
import NIOCore
import NetAddress
import SOCKSSession
import SOCKSWire
import AccessPolicy

/// The protocol a session's client came in with, which decides how its replies are
/// written. Session machines and handlers speak of outcomes (granted, failed); the
/// front door turns them into the client's protocol.
enum FrontDoor: Sendable {
    case socks(SOCKSVersion)
    /// An HTTP proxy request, answered in the HTTP/1.x minor version the client spoke.
    case http(minorVersion: Int)

    /// The protocol as the policy names it (`version`).
    var requestVersion: RequestFacts.Version {
        switch self {
        case .socks(let version): RequestFacts.Version(version)
        case .http: .http
        }
    }

    /// The reply that starts the relay: SOCKS's success with the bound address, or
    /// HTTP's `200 Connection established`.
    func granted(bound: IPEndpoint) -> ClientReply {
        switch self {
        case .socks(let version): .socks(.granted(version: version, boundAddress: bound))
        case .http(let minorVersion): .http(.established, minorVersion: minorVersion)
        }
    }

    func failed(_ failure: SOCKSRequestFailure) -> ClientReply {
        switch self {
        case .socks(let version): .socks(.failed(failure, version: version))
        case .http(let minorVersion): .http(ProxyStatus(failure), minorVersion: minorVersion)
        }
    }

    /// The answer when the audit log cannot take the session's records (its disk is full):
    /// SOCKS's general failure, HTTP's 503.
    var auditLogUnavailable: ClientReply {
        switch self {
        case .socks(let version): .socks(.failed(.generalFailure, version: version))
        case .http(let minorVersion): .http(.serviceUnavailable, minorVersion: minorVersion)
        }
    }
}

/// One reply to a client, in its protocol.
enum ClientReply {
    case socks(SOCKSServerMessage)
    case http(ProxyStatus, minorVersion: Int)

    /// The code the audit log records: the SOCKS reply code or the HTTP status.
    var code: Int? {
        switch self {
        case .socks(let message): message.replyCode.map(Int.init)
        case .http(let status, _): status.code
        }
    }

    func write(to buffer: inout ByteBuffer) {
        switch self {
        case .socks(let message): buffer.writeSOCKSServerMessage(message)
        case .http(.established, let minorVersion): buffer.writeBytes(ProxyReply.established(minorVersion: minorVersion))
        case .http(let status, let minorVersion): buffer.writeBytes(ProxyReply.status(status, minorVersion: minorVersion))
        }
    }
}

extension ChannelHandlerContext {
    /// Writes a reply (flushed by `flush` or the next `writeAndFlush`).
    func write(_ reply: ClientReply) {
        var bytes = channel.allocator.buffer(capacity: 22)
        reply.write(to: &bytes)
        write(NIOAny(bytes), promise: nil)
    }

    /// Sends a reply, then closes the connection.
    func sendAndClose(_ reply: ClientReply) {
        var bytes = channel.allocator.buffer(capacity: 22)
        reply.write(to: &bytes)
        writeAndFlush(NIOAny(bytes)).assumeIsolated().whenComplete { _ in self.close(promise: nil) }
    }

    /// Writes a SOCKS message (flushed by `flush` or the next `writeAndFlush`).
    func write(_ message: SOCKSServerMessage) { write(ClientReply.socks(message)) }

    /// Sends a SOCKS message, then closes the connection.
    func sendAndClose(_ message: SOCKSServerMessage) { sendAndClose(ClientReply.socks(message)) }
}
