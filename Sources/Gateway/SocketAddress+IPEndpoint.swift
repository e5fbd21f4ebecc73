import NIOCore
import NetAddress
import PosixEndpoint

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
        withSockAddr { address, _ in IPEndpoint(sockaddr: address) }
    }
}
