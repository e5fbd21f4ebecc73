import Glibc
import NetAddress
import PosixEndpoint
import Testing

@testable import Privileges

@Suite struct ListeningSocketTests {
    @Test func onePerEventLoopOnOnePort() throws {
        let sockets = try ListeningSocket.open(IPEndpoint("127.0.0.1:0")!, count: 3)
        defer { for socket in sockets { close(socket.descriptor) } }
        #expect(sockets.count == 3)
        let port = sockets[0].endpoint.port
        #expect(port != 0, "port 0 becomes the port the kernel chose")
        for socket in sockets {
            #expect(IPEndpoint.local(of: socket.descriptor) == IPEndpoint(address: .v4(IPv4Address(127, 0, 0, 1)), port: port))
        }
    }

    @Test func aPortHeldByAnotherSocketIsAClearError() throws {
        let holder = try ListeningSocket.open(IPEndpoint("127.0.0.1:0")!)
        defer { close(holder.descriptor) }
        #expect(throws: PrivilegeError.self) {
            _ = try ListeningSocket.open(holder.endpoint, count: 2)
        }
    }

    @Test func ipv6EndpointReadBack() throws {
        let sockets = try ListeningSocket.open(IPEndpoint("[::1]:0")!, count: 2)
        defer { for socket in sockets { close(socket.descriptor) } }
        #expect(sockets.count == 2)
        #expect(sockets[0].endpoint.address == .v6(IPv6Address("::1")!))
        #expect(sockets[1].endpoint == sockets[0].endpoint)
    }
}
