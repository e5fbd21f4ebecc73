import AccessPolicy
import NIOCore
import NIOPosix
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire

/// Carries out a `ConnectSession`'s own actions for one client connection: connects
/// (directly or through parents) and hands over to `SessionRelay`. The lifecycle it
/// shares with every session (resolve, decide, EOF, departure) is `SessionDriver`'s.
final class ConnectSessionHandler: SessionDriver<ConnectSession> {
    /// The destination's connection, from connect until the relay takes it.
    private var outbound: (any Channel)?
    /// The connection being attempted: a client that leaves ends the attempt at once,
    /// rather than leaving it to `--connect-timeout`.
    private var attempt: (any Channel)?
    /// The parent that carries the session, and which of the route it was (1: the first).
    private var parent: (url: SOCKSURL, attempt: Int)?

    /// Also closes the connection attempted or made.
    override func endOutsideWork() {
        super.endOutsideWork()
        attempt?.close(promise: nil)
        attempt = nil
        outbound?.close(promise: nil)
        outbound = nil
    }

    override func performOwn(_ action: ConnectSession.Action, context: ChannelHandlerContext) {
        switch action {
        case .none, .resolve, .decide, .fail, .abandon:
            break  // shared: SessionDriver's
        case .connect(let destination):
            connect(to: destination, context: context)
        case .connectVia(let route, let destination, let port):
            connectVia(route, destination: destination, port: port, context: context)
        case .startRelay:
            guard let outbound, let bound = outbound.localAddress?.ipEndpoint else {
                // The destination's connection closed already: nothing to relay.
                outbound?.close(promise: nil)
                self.outbound = nil
                context.sendAndClose(setup.frontDoor.failed(.generalFailure))
                return
            }
            self.outbound = nil
            SessionRelay.start(
                client: context, outbound: outbound, reply: setup.frontDoor.granted(bound: bound), early: early,
                gateway: setup.gateway, session: setup.id, parent: parent.map { "\($0.url) (attempt \($0.attempt))" })
        case .closeOutbound:
            outbound?.close(promise: nil)
            outbound = nil
        }
    }

    /// Through the allowing rule's parents (`ParentConnector`); the audit log hears which
    /// parent carried the session.
    private func connectVia(_ route: [SOCKSURL], destination: SOCKSHost, port: UInt16, context: ChannelHandlerContext) {
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timing = ConnectTiming(setup.gateway.metrics)
        ParentConnector.connect(
            route: route, command: .connect, destination: destination, port: port, gateway: setup.gateway,
            eventLoop: context.eventLoop
        ) { channel in
            // The client left before the attempt began: nothing to connect for.
            if this.value.machine.isEnded { channel.close(promise: nil) } else { this.value.attempt = channel }
        }.assumeIsolated().whenComplete { result in
            self.attempt = nil
            switch result {
            case .success(let connected):
                timing.connected()
                self.outbound = connected.channel
                self.parent = (connected.parent, connected.attempt)
                self.perform(self.machine.connected(), context: context)
            case .failure(let refused as ParentConnector.Refused):
                self.setup.gateway.logger.info(
                    "CONNECT through a parent refused", metadata: ["destination": "\(destination):\(port)", "reason": "\(refused.reason)"])
                timing.failed(refused.failure)
                self.perform(self.machine.connectFailed(refused.failure), context: context)
            case .failure(is Abandoned):
                // The client left while the parent answered: nothing failed.
                self.setup.gateway.logger.debug("CONNECT through a parent abandoned: the client left")
                self.perform(self.machine.connectFailed(.generalFailure), context: context)
            case .failure(let error):
                self.setup.gateway.logger.notice("CONNECT through a parent failed", metadata: ["error": "\(error)"])
                timing.failed(.generalFailure)
                self.perform(self.machine.connectFailed(.generalFailure), context: context)
            }
        }
    }

    private func connect(to destination: IPEndpoint, context: ChannelHandlerContext) {
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timing = ConnectTiming(setup.gateway.metrics)
        OutboundConnect.open(to: destination, gateway: setup.gateway, on: context.eventLoop) { channel in
            // The client left before the attempt began: nothing to connect for.
            guard !this.value.machine.isEnded else { throw ChannelError.ioOnClosedChannel }
            this.value.attempt = channel
        }.assumeIsolated().whenComplete { result in
            self.attempt = nil
            switch result {
            case .success(let channel):
                timing.connected()
                self.outbound = channel
                self.perform(self.machine.connected(), context: context)
            case .failure(let error):
                self.setup.gateway.logger.debug("connect failed", metadata: ["destination": "\(destination)", "error": "\(error)"])
                let failure = OutboundConnect.failure(error)
                timing.failed(failure)
                self.perform(self.machine.connectFailed(failure), context: context)
            }
        }
    }
}

/// An outbound connect timed for the metrics (`identgate_connect_duration_seconds`,
/// `identgate_connect_failures_total`); with metrics off, no clock is read.
struct ConnectTiming {
    private let metrics: GatewayMetrics?
    private let started: ContinuousClock.Instant?

    init(_ metrics: GatewayMetrics?) {
        self.metrics = metrics
        started = metrics == nil ? nil : .now
    }

    func connected() {
        if let metrics, let started { metrics.connected(after: .now - started) }
    }

    func failed(_ failure: SOCKSRequestFailure) {
        metrics?.connectFailed(failure)
    }
}
