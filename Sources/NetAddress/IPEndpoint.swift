/// An IP address and a port: a socket's address, as SOCKS, the policy and the CLI see it.
public struct IPEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `1.2.3.4:80` or `[::1]:80`. IPv6 needs the brackets, because its colons would
    /// make the port ambiguous.
    public init?(_ text: String) {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text[text.index(after: close)...].hasPrefix(":")
            else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
            guard IPv6Address(String(host)) != nil else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            guard IPv4Address(String(host)) != nil else { return nil }
        }
        guard let address = IPAddress(String(host)),
            !port.isEmpty, port.allSatisfy(\.isASCII), let number = UInt16(port)
        else { return nil }
        self.init(address: address, port: number)
    }

    public var description: String {
        switch address {
        case .v4: "\(address):\(port)"
        case .v6: "[\(address)]:\(port)"
        }
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An endpoint as the socket system calls take it.
public enum PosixSocketAddress {
    case v4(sockaddr_in)
    case v6(sockaddr_in6)

    /// Calls `body` with a pointer to the address and its length, as bind and connect want.
    public func withSockAddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        switch self {
        case .v4(var address):
            return try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .v6(var address):
            return try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }
}

extension IPEndpoint {
    /// Built from the numbers directly: no text round trip, no resolution.
    public var posixAddress: PosixSocketAddress {
        switch address {
        case .v4(let v4):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = v4.value.bigEndian
            return .v4(sin)
        case .v6(let v6):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
                for (index, byte) in v6.octets.enumerated() { raw[index] = byte }
            }
            return .v6(sin6)
        }
    }
}

extension IPEndpoint {
    /// The endpoint a system call filled in (getsockname, accept); nil for a family
    /// other than IPv4 and IPv6.
    public init?(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in.self) }
            self.init(address: .v4(IPv4Address(UInt32(bigEndian: sin.sin_addr.s_addr))), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &storage) { $0.loadUnaligned(as: sockaddr_in6.self) }
            let address = withUnsafeBytes(of: sin6.sin6_addr) { IPv6Address(octets: $0) }
            self.init(address: .v6(address), port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// The local endpoint of a socket, from getsockname(2).
    public static func local(of descriptor: Int32) -> IPEndpoint? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return named == 0 ? IPEndpoint(storage) : nil
    }
}
