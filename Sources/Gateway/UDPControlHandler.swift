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
            context.sendAndClose(setup.frontDoor.failed(.notAllowed))
            return
        }
        let expected = request.host.address.map { IPEndpoint(address: $0, port: request.port) }
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
                context.sendAndClose(self.setup.frontDoor.failed(.generalFailure))
            case .success(let relay):
                context.write(self.setup.frontDoor.granted(bound: relay))
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
            // The control connection closed, or the gateway stops: the association ends
            // with it. Draining after a takeover, it lives as long as its control connection.
            if event is ChannelShouldQuiesceEvent, setup.gateway.isDraining { return }
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
