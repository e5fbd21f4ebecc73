import NIOCore
import NetAddress

/// Why a message from a client could not be accepted. Each case maps to the protocol's
/// error reply in `SOCKSServerStateMachine`.
public enum SOCKSWireError: Error, Hashable, Sendable {
    /// The first octet was neither 4 nor 5 (or a SOCKS5 request's VER was not 5).
    case unsupportedVersion(UInt8)
    case unsupportedSOCKS4Command(UInt8)
    /// More than `Limits.maxUserIDLength` octets arrived without the terminating NUL.
    case userIDTooLong
    case userIDNotUTF8
    case hostNameTooLong
    /// Empty, or with octets that cannot be in a host name.
    case invalidHostName
    /// A SOCKS5 greeting that lists zero methods.
    case noMethods
    /// RFC 1929 sub-negotiation with a version other than 1.
    case unsupportedSubnegotiationVersion(UInt8)
    case invalidUsername
    case unsupportedCommand(UInt8)
    case nonzeroReserved(UInt8)
    case unsupportedAddressType(UInt8)
    /// An RFC 1961 message that is not one: wrong version or type, an oversized token,
    /// or a message of the wrong type for the step.
    case gssapiFraming(String)
}

/// Hard caps on the fields the wire leaves unbounded.
public struct SOCKSLimits: Hashable, Sendable {
    /// The SOCKS4 USERID is NUL-terminated with no length; 255 matches RFC 1929's ULEN.
    public var maxUserIDLength: Int = 255
    /// SOCKS4a host names are NUL-terminated; 255 matches SOCKS5's length octet.
    public var maxHostNameLength: Int = 255

    public init() {}
}

// MARK: Reading client messages
//
// Every reader returns nil when the buffer does not hold the whole message yet and then
// leaves the reader index where it was, so the caller can wait for more bytes and try
// again. A reader that throws leaves the index anywhere: the connection is ending.

extension ByteBuffer {
    /// `VN=4 CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL]`.
    public mutating func readSOCKS4Request(limits: SOCKSLimits = SOCKSLimits()) throws -> SOCKS4Request? {
        let start = readerIndex
        guard let request = try readSOCKS4RequestBody(limits: limits) else {
            moveReaderIndex(to: start)
            return nil
        }
        return request
    }

    private mutating func readSOCKS4RequestBody(limits: SOCKSLimits) throws -> SOCKS4Request? {
        guard let (version, command, port, rawAddress) = readMultipleIntegers(as: (UInt8, UInt8, UInt16, UInt32).self)
        else { return nil }
        guard version == 4 else { throw SOCKSWireError.unsupportedVersion(version) }
        let socksCommand = SOCKS4Command(rawValue: command)
        guard socksCommand == .connect || socksCommand == .bind else {
            throw SOCKSWireError.unsupportedSOCKS4Command(command)
        }
        guard let userIDBytes = try readNULTerminated(max: limits.maxUserIDLength, tooLong: .userIDTooLong) else {
            return nil
        }
        guard let userID = String(validating: userIDBytes, as: UTF8.self) else {
            throw SOCKSWireError.userIDNotUTF8
        }
        let address = IPv4Address(rawAddress)
        var hostName: String?
        // SOCKS4a: 0.0.0.x with x != 0 says a host name follows. 0.0.0.0 is plain SOCKS4.
        if rawAddress & 0xFFFF_FF00 == 0, rawAddress != 0 {
            guard let nameBytes = try readNULTerminated(max: limits.maxHostNameLength, tooLong: .hostNameTooLong) else {
                return nil
            }
            hostName = try Self.hostName(from: nameBytes)
        }
        return SOCKS4Request(command: socksCommand, port: port, address: address, userID: userID, hostName: hostName)
    }

    /// The octets before the next NUL, consuming the NUL; nil if none has arrived yet.
    private mutating func readNULTerminated(max: Int, tooLong: SOCKSWireError) throws -> [UInt8]? {
        let searchable = readableBytesView.prefix(max + 1)
        guard let nul = searchable.firstIndex(of: 0) else {
            if readableBytes > max { throw tooLong }
            return nil
        }
        guard let bytes = readBytes(length: nul - readerIndex) else { return nil }
        moveReaderIndex(forwardBy: 1)
        return bytes
    }

    /// `VER=5 NMETHODS METHODS…`.
    public mutating func readSOCKS5Greeting() throws -> SOCKS5Greeting? {
        let start = readerIndex
        guard let (version, count) = readMultipleIntegers(as: (UInt8, UInt8).self) else { return nil }
        guard version == 5 else { throw SOCKSWireError.unsupportedVersion(version) }
        guard count > 0 else { throw SOCKSWireError.noMethods }
        guard let methods = readBytes(length: Int(count)) else {
            moveReaderIndex(to: start)
            return nil
        }
        return SOCKS5Greeting(methods: methods.map(SOCKS5AuthMethod.init(rawValue:)))
    }

    /// `VER=1 ULEN UNAME PLEN PASSWD` (RFC 1929).
    public mutating func readUsernamePasswordRequest() throws -> UsernamePasswordRequest? {
        let start = readerIndex
        guard let (version, usernameLength) = readMultipleIntegers(as: (UInt8, UInt8).self) else { return nil }
        guard version == 1 else { throw SOCKSWireError.unsupportedSubnegotiationVersion(version) }
        guard usernameLength > 0 else { throw SOCKSWireError.invalidUsername }
        guard let usernameBytes = readBytes(length: Int(usernameLength)),
            let passwordLength = readInteger(as: UInt8.self),
            let password = readBytes(length: Int(passwordLength))
        else {
            moveReaderIndex(to: start)
            return nil
        }
        guard let username = String(validating: usernameBytes, as: UTF8.self) else {
            throw SOCKSWireError.invalidUsername
        }
        return UsernamePasswordRequest(username: username, password: password)
    }

    /// `VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT`. The header is checked as soon as its four
    /// octets are in, so a bad command or address type is answered without waiting for
    /// an address whose length cannot be known.
    public mutating func readSOCKS5Request() throws -> SOCKS5Request? {
        let start = readerIndex
        guard let (version, command, reserved, addressType) = readMultipleIntegers(as: (UInt8, UInt8, UInt8, UInt8).self)
        else { return nil }
        guard version == 5 else { throw SOCKSWireError.unsupportedVersion(version) }
        let socksCommand = SOCKS5Command(rawValue: command)
        guard [.connect, .bind, .udpAssociate].contains(socksCommand) else {
            throw SOCKSWireError.unsupportedCommand(command)
        }
        guard reserved == 0 else { throw SOCKSWireError.nonzeroReserved(reserved) }
        guard let host = try readSOCKS5Host(addressType: addressType), let port = readInteger(as: UInt16.self) else {
            moveReaderIndex(to: start)
            return nil
        }
        return SOCKS5Request(command: socksCommand, host: host, port: port)
    }

    /// The header of a SOCKS5 UDP datagram, `RSV(2) FRAG ATYP DST.ADDR DST.PORT`; the
    /// payload follows it in the buffer. nil if the datagram is too short to hold one.
    public mutating func readSOCKS5UDPHeader() throws -> SOCKS5UDPHeader? {
        guard let (_, fragment, addressType) = readMultipleIntegers(as: (UInt16, UInt8, UInt8).self),
            let host = try readSOCKS5Host(addressType: addressType), let port = readInteger(as: UInt16.self)
        else { return nil }
        return SOCKS5UDPHeader(fragment: fragment, host: host, port: port)
    }

    private mutating func readSOCKS5Host(addressType: UInt8) throws -> SOCKSHost? {
        switch addressType {
        case 1:
            // One integer read, not an array of four bytes (big-endian, as the wire has it).
            return readInteger(as: UInt32.self).map { .ipv4(IPv4Address($0)) }
        case 4:
            return readBytes(length: 16).map { .ipv6(IPv6Address(octets: $0)) }
        case 3:
            guard let length = readInteger(as: UInt8.self), let name = readBytes(length: Int(length)) else {
                return nil
            }
            return .domain(try Self.hostName(from: name))
        default:
            throw SOCKSWireError.unsupportedAddressType(addressType)
        }
    }

    /// Host names are kept exactly as sent, but only if every octet can be part of a DNS
    /// name or an address literal: letters, digits, `-`, `.`, `_` and `:`. Anything else
    /// (spaces, control octets, non-ASCII) is refused rather than passed to the resolver.
    static func hostName(from bytes: [UInt8]) throws -> String {
        func allowed(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                UInt8(ascii: "_"), UInt8(ascii: ":"):
                true
            default:
                false
            }
        }
        guard !bytes.isEmpty, bytes.allSatisfy(allowed) else { throw SOCKSWireError.invalidHostName }
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: Writing server messages

extension ByteBuffer {
    @discardableResult
    public mutating func writeSOCKS4Reply(_ reply: SOCKS4Reply) -> Int {
        writeMultipleIntegers(UInt8(0), reply.code.rawValue, reply.port, reply.address.value)
    }

    @discardableResult
    public mutating func writeSOCKS5MethodSelection(_ method: SOCKS5AuthMethod) -> Int {
        writeMultipleIntegers(UInt8(5), method.rawValue)
    }

    /// RFC 1929's reply carries version 1, like the request.
    @discardableResult
    public mutating func writeUsernamePasswordReply(success: Bool) -> Int {
        writeMultipleIntegers(UInt8(1), success ? UInt8(0) : UInt8(1))
    }

    @discardableResult
    public mutating func writeSOCKS5Reply(_ reply: SOCKS5Reply) -> Int {
        writeMultipleIntegers(UInt8(5), reply.code.rawValue, UInt8(0)) + writeSOCKS5Address(reply.host, port: reply.port)
    }

    /// The header of a SOCKS5 UDP datagram (RSV, FRAG 0, the address); the payload goes
    /// after it.
    @discardableResult
    public mutating func writeSOCKS5UDPHeader(host: SOCKSHost, port: UInt16) -> Int {
        writeMultipleIntegers(UInt16(0), UInt8(0)) + writeSOCKS5Address(host, port: port)
    }

    /// `ATYP ADDR PORT`.
    private mutating func writeSOCKS5Address(_ host: SOCKSHost, port: UInt16) -> Int {
        var written = 0
        switch host {
        case .ipv4(let address):
            written += writeMultipleIntegers(UInt8(1), address.value)
        case .ipv6(let address):
            written += writeMultipleIntegers(UInt8(4), address.high, address.low)
        case .domain(let name):
            let bytes = Array(name.utf8.prefix(255))
            written += writeInteger(UInt8(3)) + writeInteger(UInt8(bytes.count)) + writeBytes(bytes)
        }
        return written + writeInteger(port)
    }
}
