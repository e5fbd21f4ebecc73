import AccessPolicy
import AuditLog
import CDirectIO
import NIOCore
import NetAddress
import PosixEndpoint
import Prometheus
import SOCKSSession
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// One client connection on a direct loop: the negotiation (`SOCKSServerStateMachine`, or
/// an HTTP CONNECT's head: DirectConnection+HTTP), then a CONNECT's session
/// (`ConnectSession`), then the relay (DirectConnection+Relay): the same pure machines
/// SwiftNIO's handlers run, carried out with system calls.
///
/// It carries what needs no waiting but a host name's lookup: no authentication, CONNECT
/// to an address or a name (DirectConnection+Begin), a decision the policy makes at once
/// (no identd), directly (no parent). Anything else is handed to SwiftNIO before it is
/// decided, with the negotiation machine as it was before the message it could not carry
/// and the bytes from that message on (`DirectDriver.handOver`): a password or GSS-API
/// method, BIND, UDP, an identd rule, a `via` route, an HTTP request other than such a
/// CONNECT, a PROXY header.
final class DirectConnection: Deadlined {
    let client: Int32
    private(set) var generation: UInt32 = 0
    unowned let loop: DirectLoop
    let driver: DirectDriver
    let peer: IPEndpoint
    /// The listener's address, when it is not a wildcard (else asked of the socket).
    let listener: IPEndpoint?

    enum Phase { case negotiating, resolving, connecting, relaying, closed }
    var phase = Phase.negotiating

    /// The negotiation as it was before a message: what a hand-over to SwiftNIO resumes.
    typealias Snapshot = (machine: SOCKSServerStateMachine, bytes: ByteBuffer, atStart: Bool)

    private(set) var negotiation: SOCKSServerStateMachine
    /// Bytes not yet taken by the negotiation; after the request, what the client sent
    /// before its reply (passed on first when the relay starts).
    var received: ByteBuffer?
    /// No negotiation message taken yet.
    private(set) var atStart = true
    /// An HTTP CONNECT's head is being read (DirectConnection+HTTP), this many reads so far.
    var httpHeadReads = 0
    var clientEOF = false
    /// Reading stopped at the limit, not at an empty socket: bytes may wait unread (the
    /// relay then starts by reading them; otherwise the next edge says when to read).
    var clientMayHoldMore = false
    /// When the current deadline passes (negotiation, connect, then idle), monotonic ns.
    var deadline: UInt64 = 0
    var heapIndex = -1
    let negotiationDeadline: UInt64

    var session: ConnectSession?
    /// The protocol the replies are written in, once the request is known.
    var frontDoor = FrontDoor.socks(.socks5)
    var sessionID: UInt64 = 0
    var admission: SessionAdmission?
    var openSessions: OpenSessions?
    /// Decides and records the session's decisions, once it is carried here.
    var decider: RequestDecider?
    /// A host name's lookup under way (DirectConnection+Begin).
    var resolution: PendingResolution?
    var timing: ConnectTiming?
    var outbound: Int32 = -1
    /// Why the client's connection ended before its reply, for the session-end record.
    var departure = ClientDeparture.closed
    /// The destination said it was readable (or hung up) while the connect was completing.
    var outboundReadable = false
    var outboundHungUp = false
    /// The client hung up (EPOLLRDHUP): its reads go on until EOF.
    var clientHungUp = false

    // The relay (DirectConnection+Relay).
    var up = RelayDirection()
    var down = RelayDirection()
    var relayStarted: UInt64 = 0
    var lastActivity: UInt64 = 0
    var resumeQueued = false

    private init(client: Int32, peer: IPEndpoint, listener: IPEndpoint?, loop: DirectLoop, driver: DirectDriver) {
        self.client = client
        self.peer = peer
        self.listener = listener
        self.loop = loop
        self.driver = driver
        let gateway = driver.gateway
        negotiation = SOCKSServerStateMachine(offeredMethods: gateway.offeredMethods, limits: gateway.configuration.limits)
        negotiationDeadline = loop.now &+ UInt64(gateway.configuration.negotiationTimeout.nanoseconds)
        deadline = negotiationDeadline
    }

    /// A connection just accepted: registered, under the negotiation deadline.
    static func start(client: Int32, peer: IPEndpoint, listener: IPEndpoint?, loop: DirectLoop, driver: DirectDriver) {
        // (TCP_NODELAY comes from the listening socket: accepted sockets inherit it.)
        let connection = DirectConnection(client: client, peer: peer, listener: listener, loop: loop, driver: driver)
        guard let generation = loop.register(client, as: .client(connection), events: DirectLoop.connectionEvents) else {
            close(client)
            return
        }
        connection.generation = generation
        loop.connectionOpened()
        loop.schedule(connection)
        // A client speaks first, and its greeting has usually arrived with the handshake's
        // last packet: read it now rather than after another turn of the loop (measured:
        // one epoll_wait less per connection; an empty socket costs one EAGAIN).
        connection.readNegotiation()
    }

    var gateway: GatewayContext { driver.gateway }

    // MARK: Events

    func clientReady(_ events: UInt32) {
        if events & DirectLoop.hangupEvents != 0 { clientHungUp = true }
        switch phase {
        case .negotiating: readNegotiation()
        case .resolving, .connecting: if events & DirectLoop.readableEvents != 0 { readEarly() }
        case .relaying: clientEventDuringRelay(events)
        case .closed: break
        }
    }

    func outboundReady(_ events: UInt32) {
        switch phase {
        case .connecting: connectProgressed(events)
        case .relaying: outboundEventDuringRelay(events)
        case .negotiating, .resolving, .closed: break
        }
    }

    func deadlineFired() {
        switch phase {
        case .negotiating:
            gateway.repeated.occurred(.negotiationTimeout, on: driver.nioLoop(loop.index), metadata: ["client": "\(peer)"])
            if httpHeadReads > 0 {
                send(.http(.requestTimeout, minorVersion: 1))
            } else if let message = negotiation.negotiationTimedOut() {
                send(.socks(message))
            }
            closeQuietly()
        case .resolving:
            // The resolver's time-out: the name is taken as unresolved, as SwiftNIO's
            // sessions take a lookup that timed out.
            resolved([])
        case .connecting:
            if outbound >= 0 { connectFailed(.timedOut) }
        case .relaying:
            idleDeadlinePassed()
        case .closed:
            break
        }
    }

    // MARK: Negotiation

    func readNegotiation() {
        guard readClient(limit: EarlyClientData.limit) else { return closeQuietly() }
        guard var buffer = received else {
            if clientEOF { closeQuietly() }
            return
        }
        // The front door: SOCKS starts with its version (4, 5); an HTTP CONNECT may be
        // carried here; anything else (other requests, a PROXY header) is SwiftNIO's.
        if atStart, let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), first != 4, first != 5 {
            guard first == UInt8(ascii: "C"), gateway.configuration.protocols.contains(.http) else {
                return handOver((negotiation, buffer, true))
            }
            return readHTTPHead(buffer)
        }
        while true {
            let before = (machine: negotiation, bytes: buffer, atStart: atStart)
            switch negotiation.receive(&buffer) {
            case .waitForMoreBytes:
                received = buffer.readableBytes > 0 ? buffer : nil
                // The request is not complete by now, so it never will be.
                if clientEOF { closeQuietly() }
                return
            case .send(let message):
                if case .methodSelection(let method) = message, method != .noAuthentication {
                    return handOver(before)
                }
                atStart = false
                guard send(.socks(message)) else { return closeQuietly() }
            case .sendAndClose(let message):
                send(.socks(message))
                return closeQuietly()
            case .close:
                return closeQuietly()
            case .checkCredentials, .acceptGSSToken, .chooseGSSProtection:
                return handOver(before)
            case .handleRequest(let request):
                received = buffer.readableBytes > 0 ? buffer : nil
                return begin(request, before: before)
            }
        }
    }

    /// Reads what the client has sent into `received`, up to `limit` bytes held; notes
    /// EOF. False: the connection failed (`departure` says how).
    func readClient(limit: Int) -> Bool {
        while (received?.readableBytes ?? 0) < limit {
            let room = min(limit - (received?.readableBytes ?? 0), 4096)
            let count = read(client, loop.scratch, room)
            if count > 0 {
                let bytes = UnsafeRawBufferPointer(start: loop.scratch, count: count)
                if received == nil { received = driver.allocator.buffer(capacity: count) }
                received?.writeBytes(bytes)
                // Edge-triggered: a short read emptied the socket, unless it hung up
                // (then its EOF is still to be read).
                if count < room, !clientHungUp {
                    clientMayHoldMore = false
                    return true
                }
            } else if count == 0 {
                clientEOF = true
                clientMayHoldMore = false
                return true
            } else {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    clientMayHoldMore = false
                    return true
                }
                departure = ClientDeparture.reason(errno: code)
                return false
            }
        }
        clientMayHoldMore = true
        return true
    }

    /// Hands the connection to SwiftNIO, which goes on from `before`.
    func handOver(_ before: Snapshot) {
        phase = .closed
        loop.unregister(client, removeInterest: true)
        loop.cancelDeadline(self)
        let remaining = deadline > loop.now ? deadline - loop.now : 0
        // Before the loop counts it closed: a drain must see it on its way to SwiftNIO.
        driver.handOver(
            client, machine: before.machine, bytes: before.bytes, atStart: before.atStart,
            deadline: .now() + .nanoseconds(Int64(remaining)), loop: loop.index)
        loop.connectionClosed()
    }

    // MARK: The session

    func perform(_ action: ConnectSession.Action) {
        switch action {
        case .none:
            break
        case .connect(let destination):
            connect(to: destination)
        case .startRelay:
            startRelay()
        case .closeOutbound:
            closeOutbound()
        case .fail(let failure, let recordEnd):
            let reply = frontDoor.failed(failure)
            if recordEnd {
                SessionRelay.recordEndBeforeRelay("failed: \(failure)", reply: reply, gateway: gateway, session: sessionID)
            }
            _ = send(reply)
            closeSession()
        case .abandon(let recordEnd):
            if recordEnd { SessionRelay.recordEndBeforeRelay(departure, reply: nil, gateway: gateway, session: sessionID) }
            closeSession()
        case .decide(let attempt):
            decideNextAddress(attempt)
        case .resolve, .connectVia:
            // Lookups start in `begin`, and parents never reach this driver (`carry` hands
            // them over before deciding); should one, the session fails rather than hangs.
            perform(.fail(.generalFailure, recordEnd: session?.ledger.allowed ?? false))
        }
    }

    /// Before the reply: what the client sends is kept for the relay (up to
    /// `EarlyClientData.limit`); its EOF or departure ends the attempt.
    func readEarly() {
        let hadData = received != nil
        guard readClient(limit: EarlyClientData.limit) else {
            if let action = session?.clientLeft() { perform(action) }
            return
        }
        if clientEOF, let action = session?.clientSentEOF(afterData: hadData || received != nil) {
            departure = ClientDeparture.leftAtEOF
            perform(action)
        }
    }

    private func startRelay() {
        // SOCKS replies with the address the outbound connection is bound to; HTTP does not.
        let bound: IPEndpoint?
        switch frontDoor {
        case .socks: bound = outbound >= 0 ? IPEndpoint.local(of: outbound) : nil
        case .http: bound = IPEndpoint(address: .v4(.any), port: 0)
        }
        guard outbound >= 0, let bound else {
            return perform(.fail(.generalFailure, recordEnd: session?.ledger.allowed ?? false))
        }
        guard send(frontDoor.granted(bound: bound)) else {
            departure = "client connection failed before the reply"
            return perform(session?.clientLeft() ?? .abandon(recordEnd: true))
        }
        beginRelay(destinationReadable: outboundReadable, destinationHungUp: outboundHungUp)
    }

    // MARK: Writing and closing

    /// Writes a reply in one call (a fresh connection's send buffer always has room for
    /// one). False: it could not be written whole.
    @discardableResult
    func send(_ reply: ClientReply) -> Bool {
        var bytes = driver.allocator.buffer(capacity: 64)
        reply.write(to: &bytes)
        let written = bytes.withUnsafeReadableBytes { Glibc.send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        return written == bytes.readableBytes
    }

    func closeOutbound() {
        guard outbound >= 0 else { return }
        loop.unregister(outbound)
        close(outbound)
        outbound = -1
    }

    /// A connection with no session: closed, nothing recorded.
    func closeQuietly() {
        guard phase != .closed else { return }
        phase = .closed
        loop.unregister(client)
        loop.cancelDeadline(self)
        close(client)
        loop.connectionClosed()
    }

    /// A session's end, however it ended (the record is the caller's): both sockets
    /// closed, its limit place and its metrics gauge given back.
    func closeSession() {
        guard phase != .closed else { return }
        closeOutbound()
        closeQuietly()
        admission?.release()
        openSessions?.closed()
        session = nil
    }

    // MARK: Shutdown

    /// The gateway stops (not a takeover's drain): a connection not yet relaying ends
    /// now and says why; a relay may run on until the grace period ends.
    func gatewayStopping() {
        switch phase {
        case .negotiating:
            closeQuietly()
        case .resolving, .connecting:
            departure = ClientDeparture.gatewayStopped
            if let action = session?.clientLeft() { perform(action) }
        case .relaying, .closed:
            break
        }
    }

    /// The grace period is over: everything still open ends.
    func gatewayStopped() {
        switch phase {
        case .negotiating, .resolving, .connecting: gatewayStopping()
        case .relaying: endRelay("closed: the gateway stopped")
        case .closed: break
        }
    }
}
