import AccessPolicy
import AuditLog
import Logging
import NIOCore
import NIOPosix
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// One SOCKS5 UDP ASSOCIATE: a relay socket the client sends SOCKS-wrapped datagrams
/// to, and one socket per address family toward destinations. Every datagram's
/// destination is decided by the policy (`udp` rules), once per destination for the
/// association's life; replies come back only from destinations the client sent to,
/// wrapped in the RFC 1928 header. Everything runs on the control connection's event
/// loop; the association ends when that connection closes, or after the idle time-out.
final class UDPAssociation {
    private let gateway: GatewayContext
    /// The request's facts; each datagram's destination is filled in.
    private let facts: RequestFacts
    private let expectedSource: IPEndpoint?
    private let control: any Channel
    private let session: UInt64
    private let decider: RequestDecider
    private let logger: Logger
    /// RFC 1961 §5: every datagram both ways is a wrapped message.
    private let perMessage: GSSPerMessage?
    private var relay: (any Channel)?
    private var outbound: [Bool: any Channel] = [:]
    /// The client's UDP address: as requested, or learnt from its first datagram.
    private var clientSource: SocketAddress?
    /// What is decided, being decided and counted (the pure part: `UDPDestinations`).
    private var destinations = UDPDestinations()
    /// The parent's association once it answered (`destinations.parent` is `.ready`): its
    /// control connection, which lives as long as this association, and its relay.
    private var parentRelay: (control: any Channel, relay: IPEndpoint)?
    private var closed = false

    init(
        gateway: GatewayContext, facts: RequestFacts, expectedSource: IPEndpoint?, control: any Channel, session: UInt64,
        admission: SessionAdmission, perMessage: GSSPerMessage? = nil, logger: Logger
    ) {
        self.perMessage = perMessage
        self.session = session
        self.decider = RequestDecider(gateway: gateway, session: session, admission: admission)
        self.gateway = gateway
        self.facts = facts
        self.expectedSource = expectedSource
        self.control = control
        self.logger = logger
    }

    /// Reads take a whole datagram of any size: 65,535 bytes holds the largest UDP payload
    /// of IPv4 (65,507) and of IPv6 without jumbograms (65,527). NIO's default of 2,048
    /// would cut longer datagrams short, silently.
    static let wholeDatagrams = FixedSizeRecvByteBufferAllocator(capacity: 65_535)

    /// Binds the relay on `address` (the one the client reached) and the outbound
    /// sockets; returns the relay's address for the reply.
    func start(on address: IPAddress, eventLoop: any EventLoop) -> EventLoopFuture<IPEndpoint> {
        // All sockets live on this event loop; the handlers reach the association there.
        let this = NIOLoopBound(self, eventLoop: eventLoop)
        let idleTimeout = gateway.configuration.idleTimeout
        let relayBound = DatagramBootstrap(group: eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions?.setOption(.recvAllocator, value: Self.wholeDatagrams)
                    let association = this.value
                    if let idleTimeout {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        Receiver({ association.fromClient($0) }, idle: { association.close() }))
                }
            }
            .bind(to: SocketAddress(IPEndpoint(address: address, port: 0)))
        let configuration = gateway.configuration
        @Sendable func outboundSocket(ipv6: Bool) -> EventLoopFuture<any Channel> {
            let source: IPAddress
            switch configuration.outboundSource(toward: ipv6 ? .v6(.any) : .v4(.any)) {
            case .kernel: source = ipv6 ? .v6(.any) : .v4(.any)
            case .address(let address): source = address
            case .none: return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
            }
            return DatagramBootstrap(group: eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.syncOptions?.setOption(.recvAllocator, value: Self.wholeDatagrams)
                        let association = this.value
                        try channel.pipeline.syncOperations.addHandler(Receiver({ association.fromDestination($0) }, idle: {}))
                    }
                }
                .bind(to: SocketAddress(IPEndpoint(address: source, port: 0)))
        }
        return relayBound.assumeIsolated().flatMap { relay in
            self.relay = relay
            if let metrics = self.gateway.metrics {
                metrics.udpAssociationOpened()
                relay.closeFuture.whenComplete { _ in metrics.udpAssociationClosed() }
            }
            // Either family may be unavailable (IPv6 off on this host, or no `--external`
            // address of it): its destinations are then unreachable, the other works.
            let v4 = outboundSocket(ipv6: false).map(Optional.some).recover { _ in nil }
            let v6 = outboundSocket(ipv6: true).map(Optional.some).recover { _ in nil }
            return v4.and(v6).assumeIsolated().flatMapThrowing { v4, v6 in
                self.outbound[false] = v4
                self.outbound[true] = v6
                if self.closed { self.close() }
                guard let address = relay.localAddress?.ipEndpoint else { throw ChannelError.ioOnClosedChannel }
                return address
            }.nonisolated()
        }.flatMapErrorThrowing { error in
            self.close()
            throw error
        }.nonisolated()
    }

    func close() {
        let wasOpen = !closed
        closed = true
        relay?.close(promise: nil)
        for channel in outbound.values { channel.close(promise: nil) }
        parentRelay?.control.close(promise: nil)
        if wasOpen, relay != nil {
            let counts = destinations.counts
            gateway.audit?.record(
                .udpAssociationEnd(
                    session: session,
                    reason: "udp association ended: \(counts.relayed) relayed, \(counts.replies) replies, "
                        + "\(counts.fragments) fragments, \(counts.foreign) foreign and \(counts.denied) denied dropped, "
                        + "\(counts.pending) dropped while their destination was resolved or decided, "
                        + "\(counts.overRate) dropped over \(UDPDestinations.Limits.decisionsPerSecond) new destinations a second"))
            logger.info(
                "UDP association ended",
                metadata: [
                    "relayed": "\(counts.relayed)", "replies": "\(counts.replies)", "fragments dropped": "\(counts.fragments)",
                    "foreign dropped": "\(counts.foreign)", "denied": "\(counts.denied)", "malformed": "\(counts.malformed)",
                    "pending dropped": "\(counts.pending)", "over rate": "\(counts.overRate)",
                ])
        }
        control.close(promise: nil)
    }

    // MARK: Client → destination

    private func fromClient(_ envelope: AddressedEnvelope<ByteBuffer>) {
        guard isFromClient(envelope.remoteAddress) else {
            destinations.counts.foreign += 1
            return
        }
        var datagram = envelope.data
        if let perMessage {
            guard let plain = perMessage.unwrapDatagram(datagram, allocator: control.allocator) else {
                destinations.counts.malformed += 1
                return
            }
            datagram = plain
        }
        guard let header = try? datagram.readSOCKS5UDPHeader() else {
            destinations.counts.malformed += 1
            return
        }
        guard header.fragment == 0 else {
            // identgate does not reassemble fragments (RFC 1928 makes it optional).
            destinations.counts.fragments += 1
            logger.debug("UDP fragment dropped", metadata: ["frag": "\(header.fragment)"])
            return
        }
        switch header.host {
        case .ipv4(let address): forward(datagram, to: IPEndpoint(address: .v4(address), port: header.port), name: nil)
        case .ipv6(let address): forward(datagram, to: IPEndpoint(address: .v6(address), port: header.port), name: nil)
        case .domain(let name):
            switch destinations.lookUp(name) {
            case .known(let address):
                guard let address else { return }
                forward(datagram, to: IPEndpoint(address: address, port: header.port), name: name)
            case .drop:
                break
            case .resolve:
                gateway.resolver.resolve(name, on: control.eventLoop, logger: logger).assumeIsolated().whenSuccess { addresses in
                    self.destinations.resolved(name, to: addresses.first)
                    guard let address = addresses.first else { return }
                    self.forward(datagram, to: IPEndpoint(address: address, port: header.port), name: name)
                }
            }
        }
    }

    /// The client's TCP address, and the port it asked for; zeros in the request mean
    /// "not known": then the first datagram from the client's address fixes the port.
    private func isFromClient(_ source: SocketAddress) -> Bool {
        if let clientSource { return source == clientSource }
        guard let endpoint = source.ipEndpoint, endpoint.address.unmapped == facts.client.address.unmapped else { return false }
        if let expectedSource {
            let anyAddress = expectedSource.address == .v4(.any) || expectedSource.address == .v6(.any)
            guard anyAddress || expectedSource.address.unmapped == endpoint.address.unmapped else { return false }
            guard expectedSource.port == 0 || expectedSource.port == endpoint.port else { return false }
        }
        clientSource = source
        return true
    }

    private func forward(_ payload: ByteBuffer, to destination: IPEndpoint, name: String?) {
        let second = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        let send = destinations.send(to: destination, policyGeneration: gateway.policy.generation, second: second)
        guard send == .decide else { return relay(payload, to: destination, send) }
        var datagramFacts = facts
        datagramFacts.destination = name.map(RequestFacts.Destination.hostName) ?? .address(destination.address)
        datagramFacts.resolvedAddress = name == nil ? nil : destination.address
        datagramFacts.destinationPort = destination.port
        decider.decide(datagramFacts, step: "udp destination", on: control.eventLoop) { event in
            switch event {
            case .decided(let decision, let recordPending):
                let (send, parentRoute) = self.destinations.decided(destination, decision)
                if let parentRoute { self.startParentRelay(parentRoute) }
                // The first datagram to a destination waits until its decision is logged.
                if !recordPending { self.relay(payload, to: destination, send) }
            case .recordWritten:
                self.relay(payload, to: destination, self.destinations.recordWritten(destination))
            case .recordFailed:
                self.destinations.recordFailed(destination)
            case .timedOut:
                self.destinations.decisionTimedOut(destination)
            }
        }
    }

    private func relay(_ payload: ByteBuffer, to destination: IPEndpoint, _ send: UDPDestinations.Send) {
        switch send {
        case .direct: self.send(payload, to: destination)
        case .viaParent: sendViaParent(payload, to: destination)
        case .decide, .drop: break
        }
    }

    /// A UDP ASSOCIATE with the first parent of the route that answers.
    private func startParentRelay(_ route: [SOCKSURL]) {
        let eventLoop = control.eventLoop
        // SOCKS4 has no UDP: only the route's SOCKS5 parents are asked.
        ParentConnector.connect(
            route: route.filter(\.scheme.isSOCKS5), command: .udpAssociate, destination: .ipv4(.any), port: 0, gateway: gateway, eventLoop: eventLoop
        ) { _ in }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let connected):
                guard !self.closed else {
                    connected.channel.close(promise: nil)
                    return
                }
                var relayAddress = connected.reply.host.address ?? .v4(.any)
                // "0.0.0.0" in a reply means "where you reached me".
                if relayAddress == .v4(.any) || relayAddress == .v6(.any) {
                    relayAddress = connected.channel.remoteAddress?.ipEndpoint?.address ?? relayAddress
                }
                self.parentRelay = (connected.channel, IPEndpoint(address: relayAddress, port: connected.reply.port))
                self.destinations.parentAssociated()
                try? connected.channel.syncOptions?.setOption(.autoRead, value: true)
                // The parent's association ends with its control connection: so does ours.
                connected.channel.closeFuture.assumeIsolated().whenComplete { _ in self.close() }
            case .failure(let error):
                self.logger.notice("UDP through a parent: no parent could associate", metadata: ["error": "\(error)"])
                self.destinations.parentFailed()
            }
        }
    }

    private func sendViaParent(_ payload: ByteBuffer, to destination: IPEndpoint) {
        guard let parentRelayAddress = parentRelay?.relay, !closed, let channel = outbound[parentRelayAddress.address.isIPv6] else {
            // Still associating (or failed): this datagram is not sent; later ones are.
            destinations.counts.pending += 1
            return
        }
        var datagram = channel.allocator.buffer(capacity: payload.readableBytes + 22)
        datagram.writeSOCKS5UDPHeader(host: SOCKSHost(destination.address), port: destination.port)
        var body = payload
        datagram.writeBuffer(&body)
        destinations.counts.relayed += 1
        gateway.metrics?.udpRelayed(fromClient: payload.readableBytes)
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: SocketAddress(parentRelayAddress), data: datagram), promise: nil)
    }

    private func send(_ payload: ByteBuffer, to destination: IPEndpoint) {
        guard !closed, let channel = outbound[destination.address.isIPv6] else { return }
        destinations.counts.relayed += 1
        gateway.metrics?.udpRelayed(fromClient: payload.readableBytes)
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: SocketAddress(destination), data: payload), promise: nil)
    }

    // MARK: Destination → client

    private func fromDestination(_ envelope: AddressedEnvelope<ByteBuffer>) {
        guard var from = envelope.remoteAddress.ipEndpoint else {
            destinations.counts.foreign += 1
            return
        }
        var payload = envelope.data
        var viaParent = false
        if let parentRelayAddress = parentRelay?.relay, from == parentRelayAddress {
            // From the parent's relay: its header names the destination that answered.
            guard let header = try? payload.readSOCKS5UDPHeader(), header.fragment == 0 else {
                destinations.counts.malformed += 1
                return
            }
            guard let address = header.host.address else {
                destinations.counts.malformed += 1
                return
            }
            from = IPEndpoint(address: address, port: header.port)
            viaParent = true
        }
        guard destinations.expectsReply(from: from, viaParent: viaParent), let relay, let clientSource else {
            destinations.counts.foreign += 1
            return
        }
        var datagram = relay.allocator.buffer(capacity: payload.readableBytes + 22)
        datagram.writeSOCKS5UDPHeader(host: SOCKSHost(from.address), port: from.port)
        gateway.metrics?.udpRelayed(toClient: payload.readableBytes)
        datagram.writeBuffer(&payload)
        if let perMessage {
            guard let wrapped = perMessage.wrapDatagram(datagram, allocator: relay.allocator) else {
                destinations.counts.malformed += 1
                return
            }
            datagram = wrapped
        }
        destinations.counts.replies += 1
        relay.writeAndFlush(AddressedEnvelope(remoteAddress: clientSource, data: datagram), promise: nil)
    }
}

/// Hands each datagram to a closure; an idle event ends the association.
private final class Receiver: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let received: (AddressedEnvelope<ByteBuffer>) -> Void
    let idle: () -> Void

    init(_ received: @escaping (AddressedEnvelope<ByteBuffer>) -> Void, idle: @escaping () -> Void) {
        self.received = received
        self.idle = idle
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received(unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { idle() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram socket error (say ICMP port unreachable) ends nothing.
    }
}
