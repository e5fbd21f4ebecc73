#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An IPv4 address as a 32-bit number in host order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        self.value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Network-order octets, as on the wire.
    public init<Bytes: Collection>(octets: Bytes) where Bytes.Element == UInt8 {
        precondition(octets.count == 4, "an IPv4 address has 4 octets")
        self.value = octets.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Strict dotted quad: four decimal numbers 0–255. `inet_pton` is strict in the
    /// same way (no octal, no short forms), which is what a policy file wants.
    public init?(_ text: String) {
        var address = in_addr()
        guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
        self.value = UInt32(bigEndian: address.s_addr)
    }

    public static let any = IPv4Address(0)
    public static let loopback = IPv4Address(127, 0, 0, 1)

    public var octets: [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    /// At most 15 characters: Swift keeps it inline, with no allocation (the audit log
    /// writes several per connection).
    public var description: String { "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.value < rhs.value }
}

/// An IPv6 address as a 128-bit number in host order, split into two halves.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Network-order octets, as on the wire.
    public init<Bytes: Collection>(octets: Bytes) where Bytes.Element == UInt8 {
        precondition(octets.count == 16, "an IPv6 address has 16 octets")
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (index, byte) in octets.enumerated() {
            if index < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    public init?(_ text: String) {
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
        let octets = withUnsafeBytes(of: &address) { Array($0) }
        self.init(octets: octets)
    }

    public static let any = IPv6Address(high: 0, low: 0)
    public static let loopback = IPv6Address(high: 0, low: 1)

    /// The address as one 128-bit number, for range arithmetic.
    public var value: UInt128 { UInt128(high) << 64 | UInt128(low) }

    public var octets: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
    }

    /// The IPv4 address inside an IPv4-mapped address (`::ffff:a.b.c.d`), which is how a
    /// dual-stack socket shows an IPv4 peer.
    public var mappedIPv4: IPv4Address? {
        guard high == 0, low >> 32 == 0xffff else { return nil }
        return IPv4Address(UInt32(truncatingIfNeeded: low))
    }

    /// RFC 5952 text, as `inet_ntop` writes it.
    public var description: String {
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) { raw in
            for (index, byte) in octets.enumerated() { raw[index] = byte }
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An IP address of either family.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    /// Accepts dotted quads and IPv6 text, with or without surrounding brackets.
    public init?(_ text: String) {
        var text = Substring(text)
        if text.hasPrefix("["), text.hasSuffix("]") { text = text.dropFirst().dropLast() }
        if let v4 = IPv4Address(String(text)) {
            self = .v4(v4)
        } else if let v6 = IPv6Address(String(text)) {
            self = .v6(v6)
        } else {
            return nil
        }
    }

    /// IPv4-mapped IPv6 addresses become IPv4, so that one rule matches a client
    /// whether it reached an IPv4 or a dual-stack listener.
    public var unmapped: IPAddress {
        if case .v6(let v6) = self, let v4 = v6.mappedIPv4 { return .v4(v4) }
        return self
    }

    public var isIPv6: Bool {
        if case .v6 = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .v4(let address): address.description
        case .v6(let address): address.description
        }
    }
}

/// A CIDR block such as `10.0.0.0/8` or `fd00::/8`.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    /// Every address of both families: 0.0.0.0/0 and ::/0.
    public static let everything = [
        IPNetwork(masked: .v4(.any), prefixLength: 0), IPNetwork(masked: .v6(.any), prefixLength: 0),
    ]

    private init(masked address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    /// The address is masked to the prefix, so `10.1.2.3/8` becomes `10.0.0.0/8`.
    public init?(address: IPAddress, prefixLength: Int) {
        switch address {
        case .v4(let v4):
            guard (0...32).contains(prefixLength) else { return nil }
            self.address = .v4(IPv4Address(v4.value & Self.mask32(prefixLength)))
        case .v6(let v6):
            guard (0...128).contains(prefixLength) else { return nil }
            let (highMask, lowMask) = Self.mask128(prefixLength)
            self.address = .v6(IPv6Address(high: v6.high & highMask, low: v6.low & lowMask))
        }
        self.prefixLength = prefixLength
    }

    /// `ADDRESS/LENGTH`, or a bare address meaning a single host.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let length: Int
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), parts[1].allSatisfy(\.isASCII) else { return nil }
            length = parsed
        } else {
            length = address.isIPv6 ? 128 : 32
        }
        self.init(address: address, prefixLength: length)
    }

    public func contains(_ candidate: IPAddress) -> Bool {
        switch (address, candidate.unmapped) {
        case (.v4(let network), .v4(let host)):
            return host.value & Self.mask32(prefixLength) == network.value
        case (.v6(let network), .v6(let host)):
            let (highMask, lowMask) = Self.mask128(prefixLength)
            return host.high & highMask == network.high && host.low & lowMask == network.low
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }

    /// First to last address of an IPv4 network; nil for IPv6.
    public var v4Range: ClosedRange<UInt32>? {
        guard case .v4(let base) = address else { return nil }
        return base.value...(base.value | ~Self.mask32(prefixLength))
    }

    /// First to last address of an IPv6 network; nil for IPv4.
    public var v6Range: ClosedRange<UInt128>? {
        guard case .v6(let base) = address else { return nil }
        let hostBits = 128 - prefixLength
        let span: UInt128 = hostBits == 128 ? .max : (1 << UInt128(hostBits)) - 1
        return base.value...(base.value | span)
    }

    /// The network in one 128-bit space for both families, IPv4 as IPv4-mapped IPv6
    /// (`::ffff:0:0/96`), so that networks of either family compare as ranges.
    public var mappedRange: ClosedRange<UInt128> {
        switch (v4Range, v6Range) {
        case (let v4?, _):
            let prefix = UInt128(0xFFFF) << 32
            return (prefix | UInt128(v4.lowerBound))...(prefix | UInt128(v4.upperBound))
        case (nil, let v6?):
            return v6
        case (nil, nil):
            return 0...UInt128.max  // not reached: a network is of one family or the other
        }
    }

    private static func mask32(_ length: Int) -> UInt32 {
        length == 0 ? 0 : UInt32.max << (32 - length)
    }

    private static func mask128(_ length: Int) -> (UInt64, UInt64) {
        switch length {
        case 0: (0, 0)
        case 1...64: (UInt64.max << (64 - length), 0)
        default: (UInt64.max, UInt64.max << (128 - length))
        }
    }
}
