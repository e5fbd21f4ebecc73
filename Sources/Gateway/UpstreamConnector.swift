import AccessPolicy
import NIOCore
import NetAddress
import ProxyURL
import SOCKSSession
import SOCKSWire

/// Reaches a forwarded HTTP request's destination exactly as a CONNECT does, for a client
/// connection that carries several requests: `ConnectSession` orders the steps (resolve,
/// decide each address through the session's `RequestDecider`, connect directly or
/// through the allowing rule's parents, wait for the record under `--audit-sync always`)
/// and this carries them out, reporting once: the connected channel (not reading yet), or
/// the failure the client hears, or that it was cancelled. Used on one event loop.
final class UpstreamConnector {
    enum Outcome {
        /// `parent`: the parent that carries it, for the session-end record.
        case connected(any Channel, parent: String?)
        /// `recordEnd`: an allowed decision was recorded, so the session's end must be too.
        case failed(SOCKSRequestFailure, recordEnd: Bool)
        case cancelled(recordEnd: Bool)
    }

    private let setup: SessionSetup
    private let decider: RequestDecider
    private let eventLoop: any EventLoop
    private var machine: ConnectSession
    private var report: ((Outcome) -> Void)?
    private var pendingDecision: PendingDecisionTask?
    /// The connection being attempted, then made: closed if nobody takes it.
    private var outbound: (any Channel)?
    private var parent: String?

    /// A connection kept from an earlier request to this endpoint, if there is one: used
    /// in place of a new connect once the policy has allowed the address directly.
    private let reuse: ((IPEndpoint) -> (any Channel)?)?

    init(
        _ setup: SessionSetup, facts: RequestFacts, eventLoop: any EventLoop, reuse: ((IPEndpoint) -> (any Channel)?)? = nil,
        report: @escaping (Outcome) -> Void
    ) {
        self.reuse = reuse
        self.setup = setup
        self.decider = setup.decider
        self.eventLoop = eventLoop
        self.machine = ConnectSession(facts: facts)
        self.report = report
    }

    func start() {
        perform(machine.start())
    }

    /// The client left, or the gateway is stopping: ends whatever is under way.
    func cancel() {
        perform(machine.clientLeft())
    }

    private func finish(_ outcome: Outcome) {
        pendingDecision?.cancel()
        pendingDecision = nil
        if case .connected = outcome {} else {
            outbound?.close(promise: nil)
        }
        outbound = nil
        let report = self.report
        self.report = nil
        report?(outcome)
    }

    private func perform(_ action: ConnectSession.Action) {
        switch action {
        case .none:
            break
        case .resolve(let name):
            setup.gateway.resolver.resolve(name, on: eventLoop, logger: setup.gateway.logger).assumeIsolated().whenSuccess { addresses in
                self.perform(self.machine.resolved(addresses))
            }
        case .decide(let facts):
            pendingDecision = decider.decide(facts, step: nil, on: eventLoop) { event in
                self.pendingDecision = nil
                self.perform(self.machine.received(event))
            }
        case .connect(let destination):
            connect(to: destination)
        case .connectVia(let route, let destination, let port):
            connectVia(route, destination: destination, port: port)
        case .startRelay:
            guard let channel = outbound, channel.isActive else { return finish(.failed(.generalFailure, recordEnd: true)) }
            finish(.connected(channel, parent: parent))
        case .fail(let failure, let recordEnd):
            finish(.failed(failure, recordEnd: recordEnd))
        case .closeOutbound:
            outbound?.close(promise: nil)
            outbound = nil
        case .abandon(let recordEnd):
            finish(.cancelled(recordEnd: recordEnd))
        }
    }

    private func connect(to destination: IPEndpoint) {
        if let kept = reuse?(destination) {
            outbound = kept
            return perform(machine.connected())
        }
        let this = NIOLoopBound(self, eventLoop: eventLoop)
        let timing = ConnectTiming(setup.gateway.metrics)
        OutboundConnect.open(to: destination, gateway: setup.gateway, on: eventLoop) { channel in
            guard !this.value.machine.isEnded else { throw ChannelError.ioOnClosedChannel }
            this.value.outbound = channel
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                timing.connected()
                self.outbound = channel
                self.perform(self.machine.connected())
            case .failure(let error):
                self.outbound = nil
                let failure = OutboundConnect.failure(error)
                timing.failed(failure)
                self.perform(self.machine.connectFailed(failure))
            }
        }
    }

    private func connectVia(_ route: [SOCKSURL], destination: SOCKSHost, port: UInt16) {
        let this = NIOLoopBound(self, eventLoop: eventLoop)
        ParentConnector.connect(
            route: route, command: .connect, destination: destination, port: port, gateway: setup.gateway, eventLoop: eventLoop
        ) { channel in
            if this.value.machine.isEnded { channel.close(promise: nil) } else { this.value.outbound = channel }
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let connected):
                self.outbound = connected.channel
                self.parent = "\(connected.parent) (attempt \(connected.attempt))"
                self.perform(self.machine.connected())
            case .failure(let refused as ParentConnector.Refused):
                self.outbound = nil
                self.perform(self.machine.connectFailed(refused.failure))
            case .failure:
                self.outbound = nil
                self.perform(self.machine.connectFailed(.generalFailure))
            }
        }
    }
}
