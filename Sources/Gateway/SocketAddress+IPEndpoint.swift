import NIOCore
import NetAddress

#if canImport(Glibc)
    import Glibc
#endif

extension SocketAddress {
    /// Built from the numbers directly: no text round trip, no resolution.
    init(_ endpoint: IPEndpoint) {
        switch endpoint.posixAddress {
        case .v4(let address): self.init(address, host: "")
        case .v6(let address): self.init(address, host: "")
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
