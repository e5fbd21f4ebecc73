import NIOCore
import NetAddress

public enum SOCKSVersion: String, Hashable, Sendable {
    case socks4, socks4a, socks5
}

public enum SOCKSCommand: String, Hashable, Sendable {
    case connect, bind
    case udpAssociate = "udp"
}

/// A complete, well-formed request of any version, as the gateway acts on it.
public struct SOCKSRequest: Hashable, Sendable {
    public var version: SOCKSVersion
    public var command: SOCKSCommand
    public var host: SOCKSHost
    public var port: UInt16
    /// The SOCKS4 USERID (nil when empty) or the RFC 1929 username.
    public var claimedUser: String?
    /// The SOCKS5 method the server chose; nil for SOCKS4.
    public var authMethod: SOCKS5AuthMethod?

    public init(
        version: SOCKSVersion, command: SOCKSCommand, host: SOCKSHost, port: UInt16,
        claimedUser: String? = nil, authMethod: SOCKS5AuthMethod? = nil
    ) {
        self.version = version
        self.command = command
        self.host = host
        self.port = port
        self.claimedUser = claimedUser
        self.authMethod = authMethod
    }
}

/// Why a request is refused, in the gateway's terms; the state machine turns it into
/// each protocol's reply code.
public enum SOCKSRequestFailure: Hashable, Sendable {
    case notAllowed
    case identUnreachable
    case identMismatch
    case generalFailure
    case networkUnreachable
    case hostUnreachable
    case connectionRefused
    case timedOut
    case commandNotSupported
    case addressTypeNotSupported

    /// SOCKS4 has one failure code besides the two ident codes.
    public var socks4Code: SOCKS4ReplyCode {
        switch self {
        case .identUnreachable: .identUnreachable
        case .identMismatch: .identMismatch
        case .notAllowed, .generalFailure, .networkUnreachable, .hostUnreachable, .connectionRefused, .timedOut,
            .commandNotSupported, .addressTypeNotSupported:
            .rejected
        }
    }

    /// SOCKS5 has no ident codes: an ident failure is "not allowed by ruleset". A
    /// connect time-out is 0x06 ("TTL expired"), the code servers commonly give for
    /// ETIMEDOUT; RFC 1928 has no closer one.
    public var socks5Code: SOCKS5ReplyCode {
        switch self {
        case .notAllowed, .identUnreachable, .identMismatch: .notAllowedByRuleset
        case .generalFailure: .generalFailure
        case .networkUnreachable: .networkUnreachable
        case .hostUnreachable: .hostUnreachable
        case .connectionRefused: .connectionRefused
        case .timedOut: .ttlExpired
        case .commandNotSupported: .commandNotSupported
        case .addressTypeNotSupported: .addressTypeNotSupported
        }
    }
}

/// Anything the server sends during negotiation.
public enum SOCKSServerMessage: Hashable, Sendable {
    case socks4Reply(SOCKS4Reply)
    case methodSelection(SOCKS5AuthMethod)
    case usernamePasswordReply(success: Bool)
    case socks5Reply(SOCKS5Reply)
}

extension ByteBuffer {
    @discardableResult
    public mutating func writeSOCKSServerMessage(_ message: SOCKSServerMessage) -> Int {
        switch message {
        case .socks4Reply(let reply): writeSOCKS4Reply(reply)
        case .methodSelection(let method): writeSOCKS5MethodSelection(method)
        case .usernamePasswordReply(let success): writeUsernamePasswordReply(success: success)
        case .socks5Reply(let reply): writeSOCKS5Reply(reply)
        }
    }
}

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
        /// Decide and carry out this request, then call `requestGranted` or `requestFailed`.
        case handleRequest(SOCKSRequest)
    }

    private enum State: Hashable, Sendable {
        case awaitingVersion
        case awaitingSOCKS4Request
        case awaitingGreeting
        case awaitingCredentials
        case checkingCredentials(username: String)
        case awaitingSOCKS5Request(username: String?, method: SOCKS5AuthMethod)
        case handlingRequest(SOCKSVersion)
        /// BIND: the first reply (the listening address) is out; the second waits for
        /// the inbound connection.
        case awaitingBindPeer(SOCKSVersion)
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
        case .handlingRequest, .awaitingBindPeer, .finished: true
        case .awaitingVersion, .awaitingSOCKS4Request, .awaitingGreeting, .awaitingCredentials,
            .checkingCredentials, .awaitingSOCKS5Request:
            false
        }
    }

    public mutating func receive(_ buffer: inout ByteBuffer) -> Action {
        do {
            return try receive0(&buffer)
        } catch let error as SOCKSWireError {
            return fail(error)
        } catch {
            preconditionFailure("readers throw only SOCKSWireError, got \(error)")
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
            state = .handlingRequest(version)
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
            state = method == .usernamePassword ? .awaitingCredentials : .awaitingSOCKS5Request(username: nil, method: method)
            return .send(.methodSelection(method))

        case .awaitingCredentials:
            guard let credentials = try buffer.readUsernamePasswordRequest() else { return .waitForMoreBytes }
            state = .checkingCredentials(username: credentials.username)
            return .checkCredentials(credentials)

        case .checkingCredentials, .handlingRequest, .awaitingBindPeer, .finished:
            // Bytes that arrive while the gateway works belong to the relay; keep them.
            return .waitForMoreBytes

        case .awaitingSOCKS5Request(let username, let method):
            guard let request = try buffer.readSOCKS5Request() else { return .waitForMoreBytes }
            state = .handlingRequest(.socks5)
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

    public mutating func credentialsChecked(valid: Bool) -> Action {
        guard case .checkingCredentials(let username) = state else {
            preconditionFailure("credentialsChecked in \(state)")
        }
        guard valid else {
            state = .finished
            return .sendAndClose(.usernamePasswordReply(success: false))
        }
        state = .awaitingSOCKS5Request(username: username, method: .usernamePassword)
        return .send(.usernamePasswordReply(success: true))
    }

    /// The success reply, carrying the address the gateway bound: for CONNECT, the
    /// outbound socket's local address; for UDP ASSOCIATE, the relay's address; for
    /// BIND's second reply, the peer's address. SOCKS4 cannot carry IPv6: it gets 0.0.0.0.
    public mutating func requestGranted(boundAddress: IPEndpoint) -> SOCKSServerMessage {
        switch state {
        case .handlingRequest(let version), .awaitingBindPeer(let version):
            state = .finished
            return Self.grantedReply(version: version, address: boundAddress)
        default:
            preconditionFailure("requestGranted in \(state)")
        }
    }

    /// BIND's first reply: the address the gateway listens on for the inbound connection.
    public mutating func bindListening(at address: IPEndpoint) -> SOCKSServerMessage {
        guard case .handlingRequest(let version) = state else { preconditionFailure("bindListening in \(state)") }
        state = .awaitingBindPeer(version)
        return Self.grantedReply(version: version, address: address)
    }

    private static func grantedReply(version: SOCKSVersion, address boundAddress: IPEndpoint) -> SOCKSServerMessage {
        switch version {
        case .socks4, .socks4a:
            let address: IPv4Address =
                if case .v4(let v4) = boundAddress.address.unmapped { v4 } else { .any }
            return .socks4Reply(SOCKS4Reply(code: .granted, port: boundAddress.port, address: address))
        case .socks5:
            return .socks5Reply(SOCKS5Reply(code: .succeeded, host: SOCKSHost(boundAddress.address), port: boundAddress.port))
        }
    }

    /// The failure reply; the caller closes after sending it.
    public mutating func requestFailed(_ failure: SOCKSRequestFailure) -> SOCKSServerMessage {
        switch state {
        case .handlingRequest(let version), .awaitingBindPeer(let version):
            state = .finished
            return Self.failureReply(failure, version: version)
        default:
            preconditionFailure("requestFailed in \(state)")
        }
    }

    /// What to say when the client has not completed its negotiation in time, if this
    /// protocol state has a reply for it. The caller closes afterwards.
    public mutating func negotiationTimedOut() -> SOCKSServerMessage? {
        defer { state = .finished }
        switch state {
        case .awaitingSOCKS4Request: return Self.failureReply(.generalFailure, version: .socks4)
        case .awaitingSOCKS5Request: return Self.failureReply(.generalFailure, version: .socks5)
        case .handlingRequest(let version), .awaitingBindPeer(let version): return Self.failureReply(.timedOut, version: version)
        case .awaitingVersion, .awaitingGreeting, .awaitingCredentials, .checkingCredentials, .finished: return nil
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
                return .sendAndClose(Self.failureReply(.generalFailure, version: .socks5))
            }
            return .close
        case .unsupportedSOCKS4Command, .userIDTooLong, .userIDNotUTF8:
            return .sendAndClose(Self.failureReply(.generalFailure, version: .socks4))
        case .hostNameTooLong, .invalidHostName:
            if case .awaitingSOCKS4Request = failedState {
                return .sendAndClose(Self.failureReply(.generalFailure, version: .socks4a))
            }
            return .sendAndClose(Self.failureReply(.generalFailure, version: .socks5))
        case .noMethods:
            return .sendAndClose(.methodSelection(.noAcceptableMethods))
        case .unsupportedSubnegotiationVersion, .invalidUsername:
            return .sendAndClose(.usernamePasswordReply(success: false))
        case .unsupportedCommand:
            return .sendAndClose(Self.failureReply(.commandNotSupported, version: .socks5))
        case .nonzeroReserved:
            return .sendAndClose(Self.failureReply(.generalFailure, version: .socks5))
        case .unsupportedAddressType:
            return .sendAndClose(Self.failureReply(.addressTypeNotSupported, version: .socks5))
        }
    }

    private static func failureReply(_ failure: SOCKSRequestFailure, version: SOCKSVersion) -> SOCKSServerMessage {
        switch version {
        case .socks4, .socks4a: .socks4Reply(SOCKS4Reply(code: failure.socks4Code))
        case .socks5: .socks5Reply(SOCKS5Reply(code: failure.socks5Code))
        }
    }
}
