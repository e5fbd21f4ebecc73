import AuditLog
import NIOCore

/// What every session handler gets from the negotiation.
struct SessionSetup {
    let gateway: GatewayContext
    /// Numbers the session's records in the audit log.
    let id: UInt64
    /// How the session's replies are written.
    let frontDoor: FrontDoor
    let admission: SessionAdmission
    /// RFC 1961 per-message protection, when granted (the stream's handler is in place).
    let perMessage: GSSPerMessage?
    /// An HTTP proxy request's method and target, for its decision records.
    var httpRequest: HTTPRequestLine? = nil

    var decider: RequestDecider {
        RequestDecider(gateway: gateway, session: id, admission: admission, httpRequest: httpRequest)
    }
}

extension ChannelHandlerContext {
    /// The client's address for a log line, made only when the line is printed.
    var remoteAddressText: String { channel.remoteAddress?.ipEndpoint?.description ?? "unknown" }
}
