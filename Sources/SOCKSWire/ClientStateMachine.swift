import NIOCore
import NetAddress
import ProxyURL

/// The client side of a SOCKS negotiation, for `identgate probe` (and a gateway talking
/// to its parent): greeting, RFC 1929 authentication, the request, and the reply (BIND:
/// both replies). Pure, like the server's machine: bytes in, steps out; the caller does
/// the I/O and keeps the time.
public struct SOCKSClientStateMachine: Sendable {
    /// What a reply said.
    public struct Reply: Hashable, Sendable {
        public var version: SOCKSVersion
        public var code: UInt8
        public var host: SOCKSHost
        public var port: UInt16

        public var granted: Bool { version == .socks5 ? code == 0 : code == 90 }

        /// `0x02 connection not allowed by ruleset`, `93 user-ids differ`.
        public var meaning: String {
            version == .socks5
                ? "0x0\(String(code, radix: 16)) \(SOCKS5ReplyCode(rawValue: code).meaning)"
                : "\(code) \(SOCKS4ReplyCode(rawValue: code).meaning)"
        }
    }

    public enum Event: Hashable, Sendable {
        /// Nothing complete yet: read more.
        case waitForMoreBytes
        /// SOCKS5: the server chose this method (the caller sends `next`, if any).
        case methodChosen(SOCKS5AuthMethod, next: [UInt8])
        /// RFC 1929's answer; on success the request follows (`next`).
        case authenticated(Bool, next: [UInt8])
        /// A reply; `final` is false for BIND's first reply (the second is awaited).
        case reply(Reply, final: Bool)
        /// The server said something this protocol has no meaning for.
        case protocolError(String)
    }

    private enum State: Hashable, Sendable {
        case awaitingMethod
        case awaitingAuthentication
        case awaitingReply(first: Bool)
        case finished
    }

    public let url: SOCKSURL
    public let command: SOCKSCommand
    public let destination: SOCKSHost
    public let port: UInt16
    private var state: State

    public init(url: SOCKSURL, command: SOCKSCommand, destination: SOCKSHost, port: UInt16) {
        self.url = url
        self.command = command
        self.destination = destination
        self.port = port
        self.state = url.scheme.version == .socks5 ? .awaitingMethod : .awaitingReply(first: true)
    }

    /// The first bytes to send: the SOCKS5 greeting, or the whole SOCKS4 request.
    public func start() -> [UInt8] {
        if url.scheme.version == .socks5 {
            return url.user == nil ? [5, 1, 0] : [5, 2, 0, 2]
        }
        return socks4Request()
    }

    public mutating func receive(_ buffer: inout ByteBuffer) -> Event {
        switch state {
        case .awaitingMethod:
            guard let bytes = buffer.readBytes(length: 2) else { return .waitForMoreBytes }
            guard bytes[0] == 5 else { return fail("the server answered version \(bytes[0]) to a SOCKS5 greeting") }
            let method = SOCKS5AuthMethod(rawValue: bytes[1])
            switch method {
            case .noAuthentication:
                state = .awaitingReply(first: true)
                return .methodChosen(method, next: socks5Request())
            case .usernamePassword:
                guard let user = url.user else { return fail("the server chose username/password, and no user was given") }
                state = .awaitingAuthentication
                let name = Array(user.utf8.prefix(255))
                let password = Array((url.password ?? "").utf8.prefix(255))
                return .methodChosen(method, next: [1, UInt8(name.count)] + name + [UInt8(password.count)] + password)
            default:
                state = .finished
                return .methodChosen(method, next: [])
            }
        case .awaitingAuthentication:
            guard let bytes = buffer.readBytes(length: 2) else { return .waitForMoreBytes }
            guard bytes[1] == 0 else {
                state = .finished
                return .authenticated(false, next: [])
            }
            state = .awaitingReply(first: true)
            return .authenticated(true, next: socks5Request())
        case .awaitingReply(let first):
            let start = buffer.readerIndex
            guard let reply = readReply(&buffer) else {
                buffer.moveReaderIndex(to: start)
                return .waitForMoreBytes
            }
            switch reply {
            case .failure(let error):
                return fail(error.message)
            case .success(let reply):
                let more = command == .bind && first && reply.granted
                state = more ? .awaitingReply(first: false) : .finished
                return .reply(reply, final: !more)
            }
        case .finished:
            return .waitForMoreBytes
        }
    }

    private mutating func fail(_ message: String) -> Event {
        state = .finished
        return .protocolError(message)
    }

    private func readReply(_ buffer: inout ByteBuffer) -> Result<Reply, ReplyError>? {
        if url.scheme.version != .socks5 {
            guard let (version, code, port, address) = buffer.readMultipleIntegers(as: (UInt8, UInt8, UInt16, UInt32).self)
            else { return nil }
            guard version == 0 || version == 4 else { return .failure(ReplyError("a SOCKS4 reply of version \(version)")) }
            return .success(Reply(version: .socks4, code: code, host: .ipv4(IPv4Address(address)), port: port))
        }
        guard let (version, code, _, type) = buffer.readMultipleIntegers(as: (UInt8, UInt8, UInt8, UInt8).self) else {
            return nil
        }
        guard version == 5 else { return .failure(ReplyError("a SOCKS5 reply of version \(version)")) }
        let host: SOCKSHost
        switch type {
        case 1:
            guard let address = buffer.readInteger(as: UInt32.self) else { return nil }
            host = .ipv4(IPv4Address(address))
        case 4:
            guard let bytes = buffer.readBytes(length: 16) else { return nil }
            host = .ipv6(IPv6Address(octets: bytes))
        case 3:
            guard let length = buffer.readInteger(as: UInt8.self), let name = buffer.readString(length: Int(length)) else {
                return nil
            }
            host = .domain(name)
        default:
            return .failure(ReplyError("a SOCKS5 reply with address type \(type)"))
        }
        guard let port = buffer.readInteger(as: UInt16.self) else { return nil }
        return .success(Reply(version: .socks5, code: code, host: host, port: port))
    }

    private struct ReplyError: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    private func socks4Request() -> [UInt8] {
        let code: UInt8 = command == .bind ? 2 : 1
        let user = Array((url.user ?? "").utf8.prefix(255))
        let portBytes = [UInt8(port >> 8), UInt8(port & 0xff)]
        switch destination {
        case .ipv4(let address):
            return [4, code] + portBytes + address.octets + user + [0]
        case .domain(let name) where url.scheme == .socks4a:
            return [4, code] + portBytes + [0, 0, 0, 1] + user + [0] + Array(name.utf8) + [0]
        default:
            // SOCKS4 cannot name IPv6 or (without 4a) a name: the caller resolves first.
            return [4, code] + portBytes + [0, 0, 0, 0] + user + [0]
        }
    }

    private func socks5Request() -> [UInt8] {
        let code: UInt8 =
            switch command {
            case .connect: 1
            case .bind: 2
            case .udpAssociate: 3
            }
        var bytes: [UInt8] = [5, code, 0]
        switch destination {
        case .ipv4(let address): bytes += [1] + address.octets
        case .ipv6(let address): bytes += [4] + address.octets
        case .domain(let name):
            let encoded = Array(name.utf8.prefix(255))
            bytes += [3, UInt8(encoded.count)] + encoded
        }
        return bytes + [UInt8(port >> 8), UInt8(port & 0xff)]
    }
}


extension SOCKSURL.Scheme {
    public var version: SOCKSVersion {
        switch self {
        case .socks4: .socks4
        case .socks4a: .socks4a
        case .socks5, .socks5h: .socks5
        }
    }
}
