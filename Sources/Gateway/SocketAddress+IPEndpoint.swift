import NIOCore
import NetAddress

#if canImport(Glibc)
    import Glibc
#endif

extension SocketAddress {
    /// Built from the numbers directly: no text round trip, no resolution.
    init(_ endpoint: IPEndpoint) {
        switch endpoint.address {
        case .v4(let v4):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = endpoint.port.bigEndian
            sin.sin_addr.s_addr = v4.value.bigEndian
            self.init(sin, host: "")
        case .v6(let v6):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = endpoint.port.bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
                for (index, byte) in v6.octets.enumerated() { raw[index] = byte }
            }
            self.init(sin6, host: "")
        }
    }

    /// nil for Unix domain sockets, which identgate never uses.
    var ipEndpoint: IPEndpoint? {
        switch self {
        case .v4(let address):
            let sin = address.address
            return IPEndpoint(
                address: .v4(NetAddress.IPv4Address(UInt32(bigEndian: sin.sin_addr.s_addr))),
                port: UInt16(bigEndian: sin.sin_port))
        case .v6(let address):
            let sin6 = address.address
            let octets = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
            return IPEndpoint(address: .v6(NetAddress.IPv6Address(octets: octets)), port: UInt16(bigEndian: sin6.sin6_port))
        case .unixDomainSocket:
            return nil
        }
    }
}
