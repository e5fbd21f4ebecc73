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
    /// Decided destinations (address and port) and whether each is allowed, under the
    /// policy generation `verdictsGeneration`; at most `Limits.destinations`.
    private var verdicts = BoundedCache<IPEndpoint, Verdict>(capacity: Limits.destinations)
    private var verdictsGeneration: UInt64 = 0
    /// Destinations whose decision is under way: their datagrams wait for none (dropped).
    private var deciding: Set<IPEndpoint> = []
    private var resolved = BoundedCache<String, IPAddress?>(capacity: Limits.names)
    /// Names being resolved: one lookup per name at a time.
    private var resolving: Set<String> = []
    /// New destinations decided in the current second (the audit records they cause).
    private var decisionsThisSecond = (second: Int64(0), count: 0)
    private var counts = (
        relayed: 0, replies: 0, fragments: 0, foreign: 0, denied: 0, malformed: 0, pending: 0, overRate: 0
    )
    private var closed = false

    /// What was decided for a destination: dropped, sent directly, or through the parent.
    private enum Verdict: Equatable {
        case denied, direct, viaParent
    }

    /// The parent's UDP association (`via` on a udp rule): one per association, made on
    /// the first destination that needs it, through the rule's parents in order. Its
    /// control connection lives as long as this association.
    private enum ParentRelay {
        case connecting(route: [SOCKSURL])
        case ready(route: [SOCKSURL], control: any Channel, relay: IPEndpoint)
        case failed
    }

    private var parentRelay: ParentRelay?

    /// What one association may make the gateway hold or write, whatever its client sends.
    enum Limits {
        /// Destinations whose verdict is remembered; the oldest is decided again later.
        static let destinations = 1024
        /// Resolved names remembered.
        static let names = 256
        /// New destinations decided, and so audit records written, per second; datagrams
        /// to further new destinations in that second are dropped and counted.
        static let decisionsPerSecond = 50
    }

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
        if case .ready(_, let parentControl, _)? = parentRelay { parentControl.close(promise: nil) }
        if wasOpen, relay != nil {
            if let audit = gateway.audit {
                var record = AuditRecord(event: .sessionEnd)
                record.session = session
                record.reason =
                    "udp association ended: \(counts.relayed) relayed, \(counts.replies) replies, "
                    + "\(counts.fragments) fragments, \(counts.foreign) foreign and \(counts.denied) denied dropped, "
                    + "\(counts.pending) dropped while their destination was resolved or decided, "
                    + "\(counts.overRate) dropped over \(Limits.decisionsPerSecond) new destinations a second"
                audit.record(record)
            }
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
            counts.foreign += 1
            return
        }
        var datagram = envelope.data
        if let perMessage {
            guard let plain = perMessage.unwrapDatagram(datagram, allocator: control.allocator) else {
                counts.malformed += 1
                return
            }
            datagram = plain
        }
        guard let header = try? datagram.readSOCKS5UDPHeader() else {
            counts.malformed += 1
            return
        }
        guard header.fragment == 0 else {
            // identgate does not reassemble fragments (RFC 1928 makes it optional).
            counts.fragments += 1
            logger.debug("UDP fragment dropped", metadata: ["frag": "\(header.fragment)"])
            return
        }
        switch header.host {
        case .ipv4(let address): forward(datagram, to: IPEndpoint(address: .v4(address), port: header.port), name: nil)
        case .ipv6(let address): forward(datagram, to: IPEndpoint(address: .v6(address), port: header.port), name: nil)
        case .domain(let name):
            if let known = resolved[name] {
                guard let address = known else { return }
                forward(datagram, to: IPEndpoint(address: address, port: header.port), name: name)
                return
            }
            // One lookup per name at a time; datagrams for it meanwhile are dropped.
            guard resolving.insert(name).inserted else {
                counts.pending += 1
                return
            }
            gateway.resolver.resolve(name, on: control.eventLoop, logger: logger).assumeIsolated().whenSuccess { addresses in
                self.resolving.remove(name)
                self.resolved.set(addresses.first, for: name)
                guard let address = addresses.first else { return }
                self.forward(datagram, to: IPEndpoint(address: address, port: header.port), name: name)
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
        // A reloaded policy decides every destination again.
        let generation = gateway.policy.generation
        if generation != verdictsGeneration {
            verdicts.removeAll()
            verdictsGeneration = generation
        }
        if let verdict = verdicts[destination] {
            switch verdict {
            case .direct: send(payload, to: destination)
            case .viaParent: sendViaParent(payload, to: destination)
            case .denied: counts.denied += 1
            }
            return
        }
        guard !deciding.contains(destination) else {
            counts.pending += 1
            return
        }
        guard admitNewDestination() else {
            counts.overRate += 1
            return
        }
        deciding.insert(destination)
        var datagramFacts = facts
        datagramFacts.destination = name.map(RequestFacts.Destination.hostName) ?? .address(destination.address)
        datagramFacts.resolvedAddress = name == nil ? nil : destination.address
        datagramFacts.destinationPort = destination.port
        decider.decide(datagramFacts, step: "udp destination", on: control.eventLoop) { event in
            switch event {
            case .decided(let decision, let recordPending):
                self.deciding.remove(destination)
                let verdict = self.verdict(for: decision)
                self.verdicts.set(verdict, for: destination)
                if verdict == .denied {
                    self.counts.denied += 1
                } else if !recordPending {
                    self.relay(payload, to: destination, verdict)
                }
            case .recordWritten:
                // The first datagram to a destination waited until its decision was logged.
                if let verdict = self.verdicts[destination] { self.relay(payload, to: destination, verdict) }
            case .recordFailed:
                self.verdicts.remove(destination)
                self.counts.denied += 1
            case .timedOut:
                // Not remembered: a later datagram asks again.
                self.deciding.remove(destination)
                self.counts.denied += 1
            }
        }
    }

    /// Direct, through the parent, or dropped: a `via` rule's destination goes through
    /// this association's parent, which the first such rule chooses; a rule naming other
    /// parents than that one is not served (dropped and counted), nor sent directly.
    private func verdict(for decision: Decision) -> Verdict {
        guard decision.verdict == .allow else { return .denied }
        guard let route = decision.route, !route.isEmpty else { return .direct }
        switch parentRelay {
        case nil:
            startParentRelay(route)
            return .viaParent
        case .connecting(let chosen), .ready(let chosen, _, _):
            return chosen == route ? .viaParent : .denied
        case .failed:
            return .denied
        }
    }

    private func relay(_ payload: ByteBuffer, to destination: IPEndpoint, _ verdict: Verdict) {
        switch verdict {
        case .direct: send(payload, to: destination)
        case .viaParent: sendViaParent(payload, to: destination)
        case .denied: counts.denied += 1
        }
    }

    /// A UDP ASSOCIATE with the first parent of the route that answers.
    private func startParentRelay(_ route: [SOCKSURL]) {
        parentRelay = .connecting(route: route)
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
                var relayAddress: IPAddress
                switch connected.reply.host {
                case .ipv4(let address): relayAddress = .v4(address)
                case .ipv6(let address): relayAddress = .v6(address)
                case .domain: relayAddress = .v4(.any)
                }
                // "0.0.0.0" in a reply means "where you reached me".
                if relayAddress == .v4(.any) || relayAddress == .v6(.any) {
                    relayAddress = connected.channel.remoteAddress?.ipEndpoint?.address ?? relayAddress
                }
                self.parentRelay = .ready(
                    route: route, control: connected.channel, relay: IPEndpoint(address: relayAddress, port: connected.reply.port))
                try? connected.channel.syncOptions?.setOption(.autoRead, value: true)
                // The parent's association ends with its control connection: so does ours.
                connected.channel.closeFuture.assumeIsolated().whenComplete { _ in self.close() }
            case .failure(let error):
                self.logger.notice("UDP through a parent: no parent could associate", metadata: ["error": "\(error)"])
                self.parentRelay = .failed
            }
        }
    }

    private func sendViaParent(_ payload: ByteBuffer, to destination: IPEndpoint) {
        guard case .ready(_, _, let parentRelayAddress)? = parentRelay, !closed,
            let channel = outbound[parentRelayAddress.address.isIPv6]
        else {
            // Still associating (or failed): this datagram is not sent; later ones are.
            counts.pending += 1
            return
        }
        var datagram = channel.allocator.buffer(capacity: payload.readableBytes + 22)
        datagram.writeSOCKS5UDPHeader(host: SOCKSHost(destination.address), port: destination.port)
        var body = payload
        datagram.writeBuffer(&body)
        counts.relayed += 1
        gateway.metrics?.udpRelayed(fromClient: payload.readableBytes)
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: SocketAddress(parentRelayAddress), data: datagram), promise: nil)
    }

    /// True if one more new destination may be decided (and recorded) this second.
    private func admitNewDestination() -> Bool {
        let second = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        if decisionsThisSecond.second != second { decisionsThisSecond = (second, 0) }
        guard decisionsThisSecond.count < Limits.decisionsPerSecond else { return false }
        decisionsThisSecond.count += 1
        return true
    }

    private func send(_ payload: ByteBuffer, to destination: IPEndpoint) {
        guard !closed, let channel = outbound[destination.address.isIPv6] else { return }
        counts.relayed += 1
        gateway.metrics?.udpRelayed(fromClient: payload.readableBytes)
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: SocketAddress(destination), data: payload), promise: nil)
    }

    // MARK: Destination → client

    private func fromDestination(_ envelope: AddressedEnvelope<ByteBuffer>) {
        guard var from = envelope.remoteAddress.ipEndpoint else {
            counts.foreign += 1
            return
        }
        var payload = envelope.data
        var expected = Verdict.direct
        if case .ready(_, _, let parentRelayAddress)? = parentRelay, from == parentRelayAddress {
            // From the parent's relay: its header names the destination that answered.
            guard let header = try? payload.readSOCKS5UDPHeader(), header.fragment == 0 else {
                counts.malformed += 1
                return
            }
            switch header.host {
            case .ipv4(let address): from = IPEndpoint(address: .v4(address), port: header.port)
            case .ipv6(let address): from = IPEndpoint(address: .v6(address), port: header.port)
            case .domain:
                counts.malformed += 1
                return
            }
            expected = .viaParent
        }
        guard verdicts[from] == expected, let relay, let clientSource else {
            counts.foreign += 1
            return
        }
        var datagram = relay.allocator.buffer(capacity: payload.readableBytes + 22)
        datagram.writeSOCKS5UDPHeader(host: SOCKSHost(from.address), port: from.port)
        gateway.metrics?.udpRelayed(toClient: payload.readableBytes)
        datagram.writeBuffer(&payload)
        if let perMessage {
            guard let wrapped = perMessage.wrapDatagram(datagram, allocator: relay.allocator) else {
                counts.malformed += 1
                return
            }
            datagram = wrapped
        }
        counts.replies += 1
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

/// The control connection of a UDP ASSOCIATE: sets up the association, answers with the
/// relay's address, and ends the association when the connection closes. Bytes the
/// client sends on it mean nothing and are dropped.
final class UDPControlHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let setup: SessionSetup
    private let facts: RequestFacts
    private let request: SOCKSRequest
    private var association: UDPAssociation?

    init(_ setup: SessionSetup, facts: RequestFacts, request: SOCKSRequest) {
        self.setup = setup
        self.facts = facts
        self.request = request
    }

    /// The request's address is where the client will send from (zeros: not known yet).
    func handlerAdded(context: ChannelHandlerContext) {
        if let refusal = setup.admission.admit(facts) {
            setup.decider.refuse(facts, refusal, on: context.eventLoop)
            context.sendAndClose(.failed(.notAllowed, version: setup.version))
            return
        }
        let expected: IPEndpoint? =
            switch request.host {
            case .ipv4(let address): IPEndpoint(address: .v4(address), port: request.port)
            case .ipv6(let address): IPEndpoint(address: .v6(address), port: request.port)
            case .domain: nil
            }
        var logger = setup.gateway.logger
        logger[metadataKey: "client"] = "\(facts.client)"
        let association = UDPAssociation(
            gateway: setup.gateway, facts: facts, expectedSource: expected, control: context.channel, session: setup.id,
            admission: setup.admission, perMessage: setup.perMessage, logger: logger)
        self.association = association
        association.start(on: facts.listener.address, eventLoop: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                logger.notice("UDP ASSOCIATE cannot bind a relay", metadata: ["error": "\(error)"])
                context.sendAndClose(.failed(.generalFailure, version: self.setup.version))
            case .success(let relay):
                context.write(.granted(version: self.setup.version, boundAddress: relay))
                context.flush()
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        association?.close()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed, is ChannelShouldQuiesceEvent:
            // The control connection closed: the association ends with it.
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
