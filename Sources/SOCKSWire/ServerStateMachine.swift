import NIOCore
import NetAddress

/// The server side of a SOCKS negotiation, from the first octet to the reply that starts
/// (or refuses) the relay. Pure: the caller feeds it bytes and outcomes and carries out
/// the actions it returns; it does no I/O and keeps no time.
public struct SOCKSServerStateMachine: Sendable {
    public enum Action: Hashable, Sendable {
        /// The buffer holds no complete message; read more.
        case waitForMoreBytes
        /// Send this, then call `receive` again: more may already be buffered.
        case send(SOCKSServerMessage)
        /// Send this, then close.
        case sendAndClose(SOCKSServerMessage)
        /// Close without a reply: the protocol has none for this (unknown version).
        case close
        /// Check these credentials, then call `credentialsChecked(valid:)`.
        case checkCredentials(UsernamePasswordRequest)
        /// RFC 1961: give this context token to GSS-API, then call `gssContextStep` or
        /// `gssFailed`.
        case acceptGSSToken([UInt8])
        /// RFC 1961 §4: the client's protection-level message (wrapped, or one bare octet
        /// as NEC's implementation sends it); choose the level, then call
        /// `gssProtectionChosen` or `gssFailed`.
        case chooseGSSProtection([UInt8])
        /// The negotiation is over: the session takes this request (and the bytes still
        /// buffered) from here, with `SOCKSServerMessage.granted`/`failed` for its replies.
        case handleRequest(SOCKSRequest)
    }

    private enum State: Hashable, Sendable {
        case awaitingVersion
        case awaitingSOCKS4Request
        case awaitingGreeting
        case awaitingCredentials
        case checkingCredentials(username: String)
        case awaitingGSSToken
        case acceptingGSSToken
        case awaitingGSSProtection(principal: String)
        case choosingGSSProtection(principal: String)
        case awaitingSOCKS5Request(username: String?, method: SOCKS5AuthMethod)
        /// The request was handed out; the session owns the connection from here.
        case requestHandedOut(SOCKSVersion)
        case finished
    }

    /// The methods this server offers, most preferred first.
    public let offeredMethods: [SOCKS5AuthMethod]
    public let limits: SOCKSLimits
    private var state: State = .awaitingVersion

    public init(offeredMethods: [SOCKS5AuthMethod], limits: SOCKSLimits = SOCKSLimits()) {
        self.offeredMethods = offeredMethods
        self.limits = limits
    }

    /// True once a request has been handed out or the negotiation ended: no more client
    /// bytes belong to the negotiation.
    public var isNegotiationComplete: Bool {
        switch state {
        case .requestHandedOut, .finished: true
        case .awaitingVersion, .awaitingSOCKS4Request, .awaitingGreeting, .awaitingCredentials,
            .checkingCredentials, .awaitingSOCKS5Request, .awaitingGSSToken, .acceptingGSSToken, .awaitingGSSProtection,
            .choosingGSSProtection:
            false
        }
    }

    public mutating func receive(_ buffer: inout ByteBuffer) -> Action {
        do {
            return try receive0(&buffer)
        } catch let error as SOCKSWireError {
            return fail(error)
        } catch {
            // The readers throw only SOCKSWireError; anything else still ends only this session.
            state = .finished
            return .close
        }
    }

    private mutating func receive0(_ buffer: inout ByteBuffer) throws -> Action {
        switch state {
        case .awaitingVersion:
            guard let version = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
                return .waitForMoreBytes
            }
            switch version {
            case 4: state = .awaitingSOCKS4Request
            case 5: state = .awaitingGreeting
            default: throw SOCKSWireError.unsupportedVersion(version)
            }
            return try receive0(&buffer)

        case .awaitingSOCKS4Request:
            guard let request = try buffer.readSOCKS4Request(limits: limits) else { return .waitForMoreBytes }
            let version: SOCKSVersion = request.hostName == nil ? .socks4 : .socks4a
            state = .requestHandedOut(version)
            return .handleRequest(
                SOCKSRequest(
                    version: version,
                    command: request.command == .connect ? .connect : .bind,
                    host: request.host,
                    port: request.port,
                    claimedUser: request.userID.isEmpty ? nil : request.userID
                )
            )

        case .awaitingGreeting:
            guard let greeting = try buffer.readSOCKS5Greeting() else { return .waitForMoreBytes }
            // The server's preference decides among the methods the client listed.
            guard let method = offeredMethods.first(where: greeting.methods.contains) else {
                state = .finished
                return .sendAndClose(.methodSelection(.noAcceptableMethods))
            }
            switch method {
            case .usernamePassword: state = .awaitingCredentials
            case .gssapi: state = .awaitingGSSToken
            default: state = .awaitingSOCKS5Request(username: nil, method: method)
            }
            return .send(.methodSelection(method))

        case .awaitingCredentials:
            guard let credentials = try buffer.readUsernamePasswordRequest() else { return .waitForMoreBytes }
            state = .checkingCredentials(username: credentials.username)
            return .checkCredentials(credentials)

        case .awaitingGSSToken:
            guard let message = try buffer.readGSSAPIMessage() else { return .waitForMoreBytes }
            switch message.kind {
            case .context:
                state = .acceptingGSSToken
                return .acceptGSSToken(message.token)
            case .abort:
                state = .finished
                return .close
            case .protection, .encapsulated:
                throw SOCKSWireError.gssapiFraming("a message of type \(message.kind.rawValue) before the context is complete")
            }

        case .awaitingGSSProtection(let principal):
            guard let message = try buffer.readGSSAPIMessage() else { return .waitForMoreBytes }
            switch message.kind {
            case .protection:
                state = .choosingGSSProtection(principal: principal)
                return .chooseGSSProtection(message.token)
            case .abort:
                state = .finished
                return .close
            case .context, .encapsulated:
                throw SOCKSWireError.gssapiFraming("a message of type \(message.kind.rawValue) instead of the protection level")
            }

        case .checkingCredentials, .acceptingGSSToken, .choosingGSSProtection, .requestHandedOut, .finished:
            // Bytes that arrive while the gateway works belong to the relay; keep them.
            return .waitForMoreBytes

        case .awaitingSOCKS5Request(let username, let method):
            guard let request = try buffer.readSOCKS5Request() else { return .waitForMoreBytes }
            state = .requestHandedOut(.socks5)
            let command: SOCKSCommand =
                switch request.command {
                case .bind: .bind
                case .udpAssociate: .udpAssociate
                default: .connect
                }
            return .handleRequest(
                SOCKSRequest(
                    version: .socks5, command: command, host: request.host, port: request.port,
                    claimedUser: username, authMethod: method
                )
            )
        }
    }

    /// The outcome of `.checkCredentials`. A result that comes when the machine no longer
    /// waits for it (the deadline ended the negotiation first) closes the connection.
    public mutating func credentialsChecked(valid: Bool) -> Action {
        guard case .checkingCredentials(let username) = state else {
            state = .finished
            return .close
        }
        guard valid else {
            state = .finished
            return .sendAndClose(.usernamePasswordReply(success: false))
        }
        state = .awaitingSOCKS5Request(username: username, method: .usernamePassword)
        return .send(.usernamePasswordReply(success: true))
    }

    /// The outcome of `.acceptGSSToken`: the token for the client (sent if not empty),
    /// and, once the context is complete, the authenticated principal. A late result
    /// closes the connection.
    public mutating func gssContextStep(reply: [UInt8], principal: String?) -> Action {
        guard case .acceptingGSSToken = state else {
            state = .finished
            return .close
        }
        state = principal.map { .awaitingGSSProtection(principal: $0) } ?? .awaitingGSSToken
        // RFC 1961 §3: a complete context with an empty token has nothing to send.
        if reply.isEmpty, principal != nil { return .waitForMoreBytes }
        return .send(.gssapi(GSSAPIMessage(.context, token: reply)))
    }

    /// The outcome of `.chooseGSSProtection`: the level message for the client. The
    /// SOCKS request comes next (under per-message protection if a level was chosen:
    /// the caller unwraps it before it gets here).
    public mutating func gssProtectionChosen(reply: [UInt8]) -> Action {
        guard case .choosingGSSProtection(let principal) = state else {
            state = .finished
            return .close
        }
        state = .awaitingSOCKS5Request(username: principal, method: .gssapi)
        return .send(.gssapi(GSSAPIMessage(.protection, token: reply)))
    }

    /// A GSS-API step failed (a bad token, an unknown service, a level refused): RFC
    /// 1961's abort message, then close.
    public mutating func gssFailed() -> Action {
        switch state {
        case .acceptingGSSToken, .choosingGSSProtection:
            state = .finished
            return .sendAndClose(.gssapi(GSSAPIMessage(.abort)))
        default:
            state = .finished
            return .close
        }
    }

    /// What to say when the client has not completed its negotiation in time, if this
    /// protocol state has a reply for it. The caller closes afterwards.
    public mutating func negotiationTimedOut() -> SOCKSServerMessage? {
        defer { state = .finished }
        switch state {
        case .awaitingSOCKS4Request: return .failed(.generalFailure, version: .socks4)
        case .awaitingSOCKS5Request: return .failed(.generalFailure, version: .socks5)
        case .awaitingGSSToken, .acceptingGSSToken, .awaitingGSSProtection, .choosingGSSProtection:
            return .gssapi(GSSAPIMessage(.abort))
        case .awaitingVersion, .awaitingGreeting, .awaitingCredentials, .checkingCredentials, .requestHandedOut, .finished:
            return nil
        }
    }

    private mutating func fail(_ error: SOCKSWireError) -> Action {
        let failedState = state
        state = .finished
        switch error {
        case .unsupportedVersion:
            // No reply exists for a version we do not speak. A SOCKS5 request with a
            // wrong VER still gets a SOCKS5 reply.
            if case .awaitingSOCKS5Request = failedState {
                return .sendAndClose(SOCKSServerMessage.failed(.generalFailure, version: .socks5))
            }
            return .close
        case .unsupportedSOCKS4Command, .userIDTooLong, .userIDNotUTF8:
            return .sendAndClose(SOCKSServerMessage.failed(.generalFailure, version: .socks4))
        case .hostNameTooLong, .invalidHostName:
            if case .awaitingSOCKS4Request = failedState {
                return .sendAndClose(SOCKSServerMessage.failed(.generalFailure, version: .socks4a))
            }
            return .sendAndClose(SOCKSServerMessage.failed(.generalFailure, version: .socks5))
        case .noMethods:
            return .sendAndClose(.methodSelection(.noAcceptableMethods))
        case .unsupportedSubnegotiationVersion, .invalidUsername:
            return .sendAndClose(.usernamePasswordReply(success: false))
        case .unsupportedCommand:
            return .sendAndClose(SOCKSServerMessage.failed(.commandNotSupported, version: .socks5))
        case .nonzeroReserved:
            return .sendAndClose(SOCKSServerMessage.failed(.generalFailure, version: .socks5))
        case .unsupportedAddressType:
            return .sendAndClose(SOCKSServerMessage.failed(.addressTypeNotSupported, version: .socks5))
        case .gssapiFraming:
            return .sendAndClose(.gssapi(GSSAPIMessage(.abort)))
        }
    }
}
