import Glibc
import Logging
import NIOCore
import NIOPosix
import NetAddress
import ProxyURL
import SOCKSWire

/// CONNECT through the allowing rule's parents (`via`): each parent in order gets a TCP
/// connection (from `--external`'s address, if set) and a SOCKS negotiation for the
/// destination, the whole attempt within `--connect-timeout`. A parent that cannot be
/// reached, breaks the protocol, refuses our credentials or stalls is passed over for
/// the next; a parent's refusal of the destination ends the search (another parent
/// would reach the same destination) and is our client's answer.
enum ParentConnector {
    struct Connected {
        let channel: any Channel
        let parent: SOCKSURL
        /// 1 for the first parent of the route.
        let attempt: Int
        /// The parent's reply: CONNECT's, or BIND's first (where the parent listens).
        let reply: SOCKSClientStateMachine.Reply
        /// BIND: the parent's second reply, when its peer has connected.
        let second: EventLoopFuture<SOCKSClientStateMachine.Reply>?
    }

    struct Refused: Error {
        let failure: SOCKSRequestFailure
        let reason: String
    }

    static func connect(
        route: [SOCKSURL], command: SOCKSCommand = .connect, destination: SOCKSHost, port: UInt16, gateway: GatewayContext,
        eventLoop: any EventLoop, attempting: @escaping @Sendable (any Channel) -> Void
    ) -> EventLoopFuture<Connected> {
        let result = eventLoop.makePromise(of: Connected.self)
        @Sendable func tryParent(_ index: Int, lastReason: String) {
            guard index < route.count else {
                result.fail(Refused(failure: .generalFailure, reason: "no parent could be used: \(lastReason)"))
                return
            }
            let parent = route[index]
            attempt(
                parent, command: command, destination: destination, port: port, gateway: gateway, eventLoop: eventLoop,
                attempting: attempting
            )
                .whenComplete { outcome in
                    switch outcome {
                    case .success(let (channel, reply, second)):
                        result.succeed(
                            Connected(channel: channel, parent: parent, attempt: index + 1, reply: reply, second: second))
                    case .failure(let refused as Refused):
                        result.fail(refused)
                    case .failure(let abandoned as Abandoned):
                        // Our side closed the attempt (the client left): no next parent.
                        result.fail(abandoned)
                    case .failure(let error):
                        gateway.logger.notice(
                            "parent unusable, trying the next", metadata: ["parent": "\(parent)", "error": "\(error)"])
                        tryParent(index + 1, lastReason: "\(parent): \(error)")
                    }
                }
        }
        tryParent(0, lastReason: "")
        return result.futureResult
    }

    private static func attempt(
        _ parent: SOCKSURL, command: SOCKSCommand, destination: SOCKSHost, port: UInt16, gateway: GatewayContext,
        eventLoop: any EventLoop, attempting: @escaping @Sendable (any Channel) -> Void
    ) -> EventLoopFuture<(any Channel, SOCKSClientStateMachine.Reply, EventLoopFuture<SOCKSClientStateMachine.Reply>?)> {
        let address: EventLoopFuture<IPAddress>
        switch parent.host {
        case .address(let literal): address = eventLoop.makeSucceededFuture(literal)
        case .name(let name):
            address = gateway.resolver.resolve(name, on: eventLoop, logger: gateway.logger).flatMapThrowing { addresses in
                guard let first = addresses.first else { throw ParentError("\(name) does not resolve") }
                return first
            }
        }
        return address.flatMap { parentAddress in
            let handshake = eventLoop.makePromise(of: SOCKSClientStateMachine.Reply.self)
            let second = command == .bind ? eventLoop.makePromise(of: SOCKSClientStateMachine.Reply.self) : nil
            let machine = SOCKSClientStateMachine(url: parent, command: command, destination: destination, port: port)
            var bootstrap = ClientBootstrap(group: eventLoop).connectTimeout(gateway.configuration.connectTimeout)
            if case .address(let source) = gateway.configuration.outboundSource(toward: parentAddress) {
                bootstrap = bootstrap.bind(to: SocketAddress(IPEndpoint(address: source, port: 0)))
            }
            let connection = bootstrap.channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    attempting(channel)
                    let options = channel.syncOptions
                    try options?.setOption(.allowRemoteHalfClosure, value: true)
                    try options?.setOption(.recvAllocator, value: GatewayContext.relayReceiveAllocator)
                    try options?.setOption(.autoRead, value: false)
                    try channel.pipeline.syncOperations.addHandler(
                        ParentHandshakeHandler(machine: machine, done: handshake, second: second))
                }
            }.connect(to: SocketAddress(IPEndpoint(address: parentAddress, port: parent.port)))
            // The negotiation is bounded too: a parent that accepts and then says nothing.
            let deadline = eventLoop.scheduleTask(in: gateway.configuration.connectTimeout) {
                handshake.fail(ParentError("no answer within --connect-timeout"))
            }
            handshake.futureResult.whenComplete { _ in deadline.cancel() }
            return connection.flatMap { channel in
                handshake.futureResult.map { (channel, $0, second?.futureResult) }.flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            }
        }
    }
}

/// The attempt was closed from our side (the session's client left, or the gateway is
/// stopping): not the parent's fault, and no reason to try the next one.
struct Abandoned: Error, CustomStringConvertible {
    var description: String { "the attempt was abandoned: the client left" }
}

struct ParentError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs the client side of the SOCKS negotiation with a parent on the outbound channel,
/// then stays as a pass-through that hands the relay any bytes the parent sent right
/// after its reply (they arrived with it, before the relay was in place).
private final class ParentHandshakeHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: SOCKSClientStateMachine
    /// The first reply: CONNECT's only one, BIND's "listening" one.
    private let done: EventLoopPromise<SOCKSClientStateMachine.Reply>
    /// BIND's second reply (the peer).
    private let second: EventLoopPromise<SOCKSClientStateMachine.Reply>?
    private var firstReplied = false
    private var buffer = ByteBuffer()
    private var negotiating = true
    /// Bytes after the parent's reply, for the relay's first read.
    private var early: ByteBuffer?
    /// Bytes the parent has sent during the negotiation, for the log of one that breaks off.
    private var received = 0
    /// Set when our side closes the connection (the client left): its end is not the
    /// parent's doing.
    private var closedByUs = false

    init(
        machine: SOCKSClientStateMachine, done: EventLoopPromise<SOCKSClientStateMachine.Reply>,
        second: EventLoopPromise<SOCKSClientStateMachine.Reply>?
    ) {
        self.machine = machine
        self.done = done
        self.second = second
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: machine.start())), promise: nil)
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard negotiating else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        received += bytes.readableBytes
        buffer.writeBuffer(&bytes)
        while negotiating {
            switch machine.receive(&buffer) {
            case .waitForMoreBytes:
                context.read()
                return
            case .methodChosen(let method, let next):
                guard method == .noAuthentication || method == .usernamePassword, !next.isEmpty else {
                    return finish(ParentError("the parent offers no method we can use (\(method.name))"), context: context)
                }
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: next)), promise: nil)
            case .authenticated(let accepted, let next):
                guard accepted else { return finish(ParentError("the parent refused our credentials"), context: context) }
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: next)), promise: nil)
            case .protocolError(let message):
                return finish(ParentError("protocol error: \(message)"), context: context)
            case .reply(let reply, let final):
                guard reply.granted else {
                    return finish(
                        ParentConnector.Refused(failure: Self.failure(reply), reason: "the parent answered \(reply.meaning)"),
                        context: context)
                }
                if !final {
                    // BIND's first reply: the parent listens; its second comes with the peer.
                    firstReplied = true
                    done.succeed(reply)
                    continue
                }
                negotiating = false
                if buffer.readableBytes > 0 { early = buffer }
                buffer = ByteBuffer()
                if firstReplied { second?.succeed(reply) } else { done.succeed(reply) }
            }
        }
    }

    func read(context: ChannelHandlerContext) {
        if let early {
            self.early = nil
            context.fireChannelRead(wrapInboundOut(early))
            context.fireChannelReadComplete()
        }
        context.read()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all { closedByUs = true }
        context.close(mode: mode, promise: promise)
    }

    /// The parent's EOF (this channel allows half-closure, so a FIN arrives here and not as
    /// `channelInactive`): during the negotiation, the parent failed, at once.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, negotiating {
            finish(ParentError("the parent closed the connection \(progress)"), context: context)
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if negotiating {
            finish(closedByUs ? Abandoned() : ParentError("the parent closed the connection \(progress)"), context: context)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if negotiating {
            let reset = (error as? IOError)?.errnoCode == ECONNRESET
            finish(reset ? ParentError("the parent reset the connection \(progress)") : error, context: context)
        }
        context.fireErrorCaught(error)
    }

    /// How far the parent's answer got, in the log's words.
    private var progress: String {
        received == 0 ? "before answering" : "after \(received) byte\(received == 1 ? "" : "s") of its answers"
    }

    private func finish(_ error: any Error, context: ChannelHandlerContext) {
        guard negotiating else { return }
        negotiating = false
        if firstReplied { second?.fail(error) } else { done.fail(error) }
    }

    /// The parent's refusal as our client's: SOCKS5's codes as they are; SOCKS4's 91,
    /// 92 and 93 (rejected, its identd) as a general failure, the code in the log.
    static func failure(_ reply: SOCKSClientStateMachine.Reply) -> SOCKSRequestFailure {
        guard reply.version == .socks5 else { return .generalFailure }
        switch SOCKS5ReplyCode(rawValue: reply.code) {
        case .notAllowedByRuleset: return .notAllowed
        case .networkUnreachable: return .networkUnreachable
        case .hostUnreachable: return .hostUnreachable
        case .connectionRefused: return .connectionRefused
        case .ttlExpired: return .timedOut
        case .commandNotSupported: return .commandNotSupported
        case .addressTypeNotSupported: return .addressTypeNotSupported
        default: return .generalFailure
        }
    }
}
