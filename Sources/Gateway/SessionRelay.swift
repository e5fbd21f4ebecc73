import Glibc
import AuditLog
import NIOCore
import NIOExtras
import NetAddress
import SOCKSWire

/// The step every relayed session (CONNECT, BIND) ends its setup with: the success
/// reply, then both connections handed to a `RelayHandler` pair, the client's early
/// bytes and EOF passed on first, and the session's end recorded when the client's side
/// closes. The session handler that calls it leaves the pipeline.
enum SessionRelay {
    static func start(
        client context: ChannelHandlerContext, outbound: any Channel, reply: ClientReply, early: EarlyClientData,
        gateway: GatewayContext, session: UInt64, parent: String? = nil
    ) {
        guard context.channel.isActive else {
            outbound.close(promise: nil)
            context.close(promise: nil)
            recordEndBeforeRelay(ClientDeparture.closed, reply: nil, gateway: gateway, session: session)
            return
        }
        var replyBytes = context.channel.allocator.buffer(capacity: 22)
        reply.write(to: &replyBytes)
        context.writeAndFlush(NIOAny(replyBytes), promise: nil)

        let started = ContinuousClock.now
        let audit = gateway.audit
        let counters = gateway.metrics.map { (fromClient: $0.tcpFromClients, toClient: $0.tcpToClients) }
        let (clientSide, destinationSide) = RelayHandler.matchedPair(counting: counters) { client in
            audit?.record(
                .sessionEnd(
                    session: session, reason: client.closeReason, bytesFromClient: client.bytesRead,
                    bytesToClient: client.partnerBytesRead, duration: .now - started, parent: parent))
        }
        do {
            try outbound.pipeline.syncOperations.addHandler(destinationSide)
            if let idleTimeout = gateway.configuration.idleTimeout {
                try context.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout), position: .before(context.handler))
            }
            try context.pipeline.syncOperations.addHandler(clientSide, position: .after(context.handler))
        } catch {
            outbound.close(promise: nil)
            context.close(promise: nil)
            recordEndBeforeRelay("failed: the relay could not be set up (\(error))", reply: nil, gateway: gateway, session: session)
            return
        }
        if let bytes = early.bytes {
            clientSide.countEarly(bytes.readableBytes)
            outbound.writeAndFlush(bytes, promise: nil)
        }
        if early.sentEOF {
            // The relay will not see this EOF again: pass it on now, after the data.
            outbound.close(mode: .output, promise: nil)
        }
        // The outbound side was connected without reading, so that nothing it sent early
        // was lost before the relay was in place; it reads from here on.
        try? outbound.syncOptions?.setOption(.autoRead, value: true)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        // The read held back while the session was set up now goes to the relay.
        context.channel.read()
    }

    /// The session-end record of a request that was allowed but ended before its relay:
    /// it failed (`reply` is what the client heard) or its client left (no reply).
    static func recordEndBeforeRelay(_ reason: String, reply: ClientReply?, gateway: GatewayContext, session: UInt64) {
        gateway.audit?.record(.sessionEnd(session: session, reason: reason, reply: reply?.code))
    }
}

/// Why a client's connection ended before its session's reply, in the session-end record's
/// words (never an internal function name).
enum ClientDeparture {
    static let closed = "client connection closed before the reply"
    static let leftAtEOF = "client left before the reply"
    static let leftBeforeDecision = "client left before the decision"
    static let gatewayStopped = "gateway stopped before the reply"

    static func reason(for error: any Error) -> String {
        if let failure = error as? GSSProtectionFailure { return "\(failure) (before the reply)" }
        guard let error = error as? IOError else { return "client connection failed before the reply" }
        return reason(errno: error.errnoCode)
    }

    /// As `reason(for:)`, from an errno (the direct driver reads them itself).
    static func reason(errno code: Int32) -> String {
        switch code {
        case ECONNRESET: return "client reset the connection before the reply"
        case ETIMEDOUT: return "client connection timed out before the reply"
        default: return "client connection failed before the reply: \(String(cString: strerror(code)))"
        }
    }
}
