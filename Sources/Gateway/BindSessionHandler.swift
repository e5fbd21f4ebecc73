import AccessPolicy
import NIOCore
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire

/// Carries out a `BindSession`'s own actions for one client connection: listens (or has
/// a parent listen), waits for the peer under `--bind-timeout`, and hands over to
/// `SessionRelay`. The listener and the peer are closed on every path that does not
/// relay. The lifecycle it shares with every session is `SessionDriver`'s.
final class BindSessionHandler: SessionDriver<BindSession> {
    private var listener: (any Channel)?
    private var peerDeadline: Scheduled<Void>?
    /// The peer's connection, from accept until the relay takes it (through a parent:
    /// the parent's connection).
    private var peer: (any Channel)?
    /// The parent that listens for this session, and which of the route it was.
    private var parent: String?

    /// Also closes the listener and any peer.
    override func endOutsideWork() {
        super.endOutsideWork()
        closeListener()
        peer?.close(promise: nil)
        peer = nil
    }

    override func performOwn(_ action: BindSession.Action, context: ChannelHandlerContext) {
        switch action {
        case .none, .resolve, .decide, .fail, .abandon:
            break  // shared: SessionDriver's
        case .listen(let toward):
            listen(toward: toward, context: context)
        case .listenVia(let route, let destination, let port):
            listenVia(route, destination: destination, port: port, context: context)
        case .sendListeningReply(let address):
            context.write(setup.frontDoor.granted(bound: address))
            context.flush()
            peerDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: setup.gateway.configuration.bindTimeout) {
                self.setup.gateway.repeated.occurred(.bindPeerTimeout, on: context.eventLoop, metadata: ["listening": "\(address)"])
                self.perform(self.machine.peerTimedOut(), context: context)
            }
        case .startRelay(let from):
            guard let peer else {
                context.sendAndClose(setup.frontDoor.failed(.generalFailure))
                return
            }
            self.peer = nil
            SessionRelay.start(
                client: context, outbound: peer, reply: setup.frontDoor.granted(bound: from), early: early,
                gateway: setup.gateway, session: setup.id, parent: parent)
        case .closeListener:
            closeListener()
        case .closePeer:
            peer?.close(promise: nil)
            peer = nil
        }
    }

    /// Asks the rule's parents to listen: their first reply (where the parent listens) is
    /// ours; their second (the peer) is decided like a peer of our own, and the parent's
    /// connection then carries the relay.
    private func listenVia(_ route: [SOCKSURL], destination: SOCKSHost, port: UInt16, context: ChannelHandlerContext) {
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        ParentConnector.connect(
            route: route, command: .bind, destination: destination, port: port, gateway: setup.gateway,
            eventLoop: context.eventLoop
        ) { channel in
            if this.value.machine.isEnded { channel.close(promise: nil) } else { this.value.peer = channel }
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let connected):
                self.peer = connected.channel
                self.parent = "\(connected.parent) (attempt \(connected.attempt))"
                connected.second?.assumeIsolated().whenComplete { second in
                    switch second {
                    case .success(let reply):
                        self.perform(self.machine.peerArrived(from: Self.endpoint(reply)), context: context)
                    case .failure(let refused as ParentConnector.Refused):
                        self.perform(self.machine.peerFailed(refused.failure), context: context)
                    case .failure:
                        self.perform(self.machine.peerFailed(.generalFailure), context: context)
                    }
                }
                self.perform(self.machine.listening(at: Self.endpoint(connected.reply)), context: context)
            case .failure(let refused as ParentConnector.Refused):
                self.setup.gateway.logger.info("BIND through a parent refused", metadata: ["reason": "\(refused.reason)"])
                self.perform(self.machine.listenFailed(refused.failure), context: context)
            case .failure(is Abandoned):
                // The client left while the parent answered: nothing failed.
                self.setup.gateway.logger.debug("BIND through a parent abandoned: the client left")
                self.perform(self.machine.listenFailed(), context: context)
            case .failure(let error):
                self.setup.gateway.logger.notice("BIND through a parent failed", metadata: ["error": "\(error)"])
                self.perform(self.machine.listenFailed(), context: context)
            }
        }
    }

    /// A parent's reply address as an endpoint; a name (rare in replies) as 0.0.0.0.
    private static func endpoint(_ reply: SOCKSClientStateMachine.Reply) -> IPEndpoint {
        IPEndpoint(address: reply.host.address ?? .v4(.any), port: reply.port)
    }

    /// Listens on the address this host would use to reach the expected peer (the
    /// "outside" address); with no usable peer address, on the one the client reached.
    private func listen(toward expected: IPAddress?, context: ChannelHandlerContext) {
        // The configured outside address if there is one (`--external`), else the one the
        // kernel would use to reach the expected peer.
        let external = expected.flatMap { peer -> IPAddress? in
            if case .address(let address) = setup.gateway.configuration.outboundSource(toward: peer) { return address }
            return nil
        }
        let local = external ?? expected.flatMap(RouteSource.address(toward:)) ?? machine.facts.listener.address
        BindListener.listen(on: local, eventLoop: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                self.setup.gateway.logger.notice("BIND cannot listen", metadata: ["address": "\(local)", "error": "\(error)"])
                self.perform(self.machine.listenFailed(), context: context)
            case .success(let (listener, peer)):
                guard let address = listener.localAddress?.ipEndpoint else {
                    listener.close(promise: nil)
                    self.perform(self.machine.listenFailed(), context: context)
                    return
                }
                self.listener = listener
                let openListeners = self.setup.gateway.openBindListeners
                openListeners.withLockedValue { $0 += 1 }
                listener.closeFuture.whenComplete { _ in openListeners.withLockedValue { $0 -= 1 } }
                peer.assumeIsolated().whenSuccess { self.peerConnected($0, context: context) }
                self.perform(self.machine.listening(at: address), context: context)
            }
        }
    }

    private func peerConnected(_ peer: any Channel, context: ChannelHandlerContext) {
        closeListener()
        guard let from = peer.remoteAddress?.ipEndpoint else {
            // Gone before it could be looked at: as if no peer had come.
            peer.close(promise: nil)
            perform(machine.peerTimedOut(), context: context)
            return
        }
        self.peer = peer
        let action = machine.peerArrived(from: from)
        if case .fail(.notAllowed, _) = action {
            setup.gateway.logger.notice(
                "BIND: the peer is not the requested host",
                metadata: ["peer": "\(from)", "expected": "\(machine.facts.destinationAddress.map(\.description) ?? "-")"])
        }
        perform(action, context: context)
    }

    private func closeListener() {
        peerDeadline?.cancel()
        peerDeadline = nil
        listener?.close(promise: nil)
        listener = nil
    }

}
