import NetAddress

#if canImport(Glibc)
    import Glibc
#endif

// The one conversion between `IPEndpoint` and the socket system calls' addresses, both
// ways. NetAddress stays pure values; every socket address the gateway reads (accept,
// getsockname, getaddrinfo, NIO's SocketAddress) becomes an endpoint here.

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
    /// The endpoint a system call filled in (accept, getsockname, getaddrinfo); nil for a
    /// family other than IPv4 and IPv6. `address` points at a whole `sockaddr_in` or
    /// `sockaddr_in6` when its family says so.
    public init?(sockaddr address: UnsafePointer<sockaddr>) {
        let raw = UnsafeRawPointer(address)
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            let sin = raw.loadUnaligned(as: sockaddr_in.self)
            self.init(address: .v4(IPv4Address(UInt32(bigEndian: sin.sin_addr.s_addr))), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = raw.loadUnaligned(as: sockaddr_in6.self)
            let v6 = withUnsafeBytes(of: sin6.sin6_addr) { IPv6Address(octets: $0) }
            self.init(address: .v6(v6), port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    public init?(_ storage: sockaddr_storage) {
        var storage = storage
        let endpoint = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { IPEndpoint(sockaddr: $0) }
        }
        guard let endpoint else { return nil }
        self = endpoint
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
