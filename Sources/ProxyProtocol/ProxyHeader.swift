import NetAddress

/// The header a load balancer (HAProxy `send-proxy`, `send-proxy-v2`) puts in front of a
/// connection it passes on, naming the real client: HAProxy's PROXY protocol, version 1
/// (one text line) and version 2 (binary). Pure: bytes in, a header or a reason out.
public struct ProxyHeader: Hashable, Sendable {
    public enum Command: Hashable, Sendable {
        /// The balancer's own connection (a health check): no client behind it.
        case local
        /// A client's connection, relayed.
        case proxy
    }

    public var version: Int
    public var command: Command
    /// The real client and the address it connected to (the balancer's front end); nil
    /// for LOCAL, and for PROXY over a family other than TCP over IPv4/IPv6 (`UNKNOWN`,
    /// UDP, UNIX), where the connection itself is all that is known.
    public var source: IPEndpoint?
    public var destination: IPEndpoint?

    public init(version: Int, command: Command, source: IPEndpoint? = nil, destination: IPEndpoint? = nil) {
        self.version = version
        self.command = command
        self.source = source
        self.destination = destination
    }

    /// v2's 12-byte signature.
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// v1's line is at most 107 bytes, CRLF included (the spec's own bound).
    public static let v1MaximumLength = 107
    /// v2's address block may be up to 65,535 bytes, almost all TLVs; we take at most
    /// this much (HAProxy's own TLVs — ALPN, authority, SSL, unique id — fit easily).
    public static let v2MaximumLength = 16 + 1024

    public enum ParseResult: Hashable, Sendable {
        /// More bytes are needed (no more than the maximum length in all).
        case needMore
        /// The header, and how many bytes it took; what follows is the client's.
        case header(ProxyHeader, length: Int)
        case invalid(String)
    }

    /// Reads a header from the start of `bytes`: the first bytes decide the version.
    public static func parse(_ bytes: some Collection<UInt8>) -> ParseResult {
        let bytes = Array(bytes.prefix(v2MaximumLength))
        if bytes.first == 0x0D { return parseV2(bytes) }
        if bytes.first == UInt8(ascii: "P") { return parseV1(bytes) }
        return bytes.isEmpty ? .needMore : .invalid("no PROXY protocol header")
    }

    // MARK: Version 1: "PROXY TCP4 192.0.2.1 198.51.100.1 56324 1080\r\n"

    private static func parseV1(_ bytes: [UInt8]) -> ParseResult {
        let prefix = Array("PROXY ".utf8)
        guard bytes.starts(with: prefix.prefix(bytes.count)) else { return .invalid("no PROXY protocol header") }
        guard let end = bytes.prefix(v1MaximumLength).firstIndex(of: UInt8(ascii: "\n")) else {
            return bytes.count >= v1MaximumLength ? .invalid("PROXY v1 line longer than 107 bytes") : .needMore
        }
        guard end > 0, bytes[end - 1] == UInt8(ascii: "\r") else { return .invalid("PROXY v1 line does not end in CRLF") }
        guard bytes[..<(end - 1)].allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            return .invalid("PROXY v1 line has bytes that are not printable ASCII")
        }
        let fields = String(decoding: bytes[..<(end - 1)], as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        let length = end + 1
        guard fields.count >= 2, fields[0] == "PROXY" else { return .invalid("PROXY v1 line malformed") }
        switch fields[1] {
        case "UNKNOWN":
            // The balancer could not tell; the rest of the line is to be ignored.
            return .header(ProxyHeader(version: 1, command: .proxy), length: length)
        case "TCP4", "TCP6":
            guard fields.count == 6 else { return .invalid("PROXY v1 \(fields[1]) needs 4 fields, got \(fields.count - 2)") }
            let ipv6 = fields[1] == "TCP6"
            guard let source = address(fields[2], ipv6: ipv6), let destination = address(fields[3], ipv6: ipv6) else {
                return .invalid("PROXY v1 address is not an \(ipv6 ? "IPv6" : "IPv4") address")
            }
            guard let sourcePort = port(fields[4]), let destinationPort = port(fields[5]) else {
                return .invalid("PROXY v1 port is not a number from 0 to 65535")
            }
            return .header(
                ProxyHeader(
                    version: 1, command: .proxy, source: IPEndpoint(address: source, port: sourcePort),
                    destination: IPEndpoint(address: destination, port: destinationPort)),
                length: length)
        default:
            return .invalid("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")
        }
    }

    private static func address(_ text: Substring, ipv6: Bool) -> IPAddress? {
        guard let address = IPAddress(String(text)), address.isIPv6 == ipv6 else { return nil }
        return address
    }

    /// Decimal, no sign, no leading zeros (the spec's form), at most 65535.
    private static func port(_ text: Substring) -> UInt16? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }),
            text == "0" || text.first != "0"
        else { return nil }
        return UInt16(text)
    }

    // MARK: Version 2

    private static func parseV2(_ bytes: [UInt8]) -> ParseResult {
        guard bytes.starts(with: v2Signature.prefix(bytes.count)) else { return .invalid("no PROXY protocol header") }
        guard bytes.count >= 16 else { return .needMore }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { return .invalid("PROXY v2 header with version \(versionCommand >> 4)") }
        let command: Command
        switch versionCommand & 0x0F {
        case 0: command = .local
        case 1: command = .proxy
        default: return .invalid("PROXY v2 command \(versionCommand & 0x0F) is neither LOCAL nor PROXY")
        }
        let familyProtocol = bytes[13]
        let blockLength = Int(bytes[14]) << 8 | Int(bytes[15])
        let length = 16 + blockLength
        guard length <= v2MaximumLength else {
            return .invalid("PROXY v2 header of \(length) bytes; at most \(v2MaximumLength) are accepted")
        }
        guard bytes.count >= length else { return .needMore }
        let block = bytes[16..<length]
        // LOCAL: the addresses, if any, are to be ignored (a health check).
        guard command == .proxy else { return .header(ProxyHeader(version: 2, command: .local), length: length) }
        let addressLength: Int
        switch familyProtocol {
        case 0x11: addressLength = 12  // TCP over IPv4
        case 0x21: addressLength = 36  // TCP over IPv6
        case 0x00, 0x12, 0x22, 0x31, 0x32:
            // UNSPEC, UDP, UNIX: nothing a SOCKS connection can come from; the
            // connection's own addresses stand, as the spec says for unknown families.
            return .header(ProxyHeader(version: 2, command: .proxy), length: length)
        default:
            return .invalid("PROXY v2 address family and protocol 0x\(String(familyProtocol, radix: 16)) unknown")
        }
        guard block.count >= addressLength else {
            return .invalid("PROXY v2 address block of \(block.count) bytes; \(addressLength) needed")
        }
        guard tlvsAreWellFormed(block.dropFirst(addressLength)) else { return .invalid("PROXY v2 TLVs overrun the header") }
        let start = block.startIndex
        let source: IPAddress
        let destination: IPAddress
        let ports: Int
        if addressLength == 12 {
            source = .v4(IPv4Address(octets: block[start..<(start + 4)]))
            destination = .v4(IPv4Address(octets: block[(start + 4)..<(start + 8)]))
            ports = start + 8
        } else {
            source = .v6(IPv6Address(octets: block[start..<(start + 16)]))
            destination = .v6(IPv6Address(octets: block[(start + 16)..<(start + 32)]))
            ports = start + 32
        }
        let sourcePort = UInt16(block[ports]) << 8 | UInt16(block[ports + 1])
        let destinationPort = UInt16(block[ports + 2]) << 8 | UInt16(block[ports + 3])
        return .header(
            ProxyHeader(
                version: 2, command: .proxy, source: IPEndpoint(address: source, port: sourcePort),
                destination: IPEndpoint(address: destination, port: destinationPort)),
            length: length)
    }

    /// Each TLV: a type byte, a 2-byte length, that many bytes; they must end exactly at
    /// the end of the block. None is interpreted (the gateway needs none of them).
    private static func tlvsAreWellFormed(_ tlvs: ArraySlice<UInt8>) -> Bool {
        var index = tlvs.startIndex
        while index < tlvs.endIndex {
            guard tlvs.endIndex - index >= 3 else { return false }
            let length = Int(tlvs[index + 1]) << 8 | Int(tlvs[index + 2])
            index += 3
            guard tlvs.endIndex - index >= length else { return false }
            index += length
        }
        return true
    }
}
