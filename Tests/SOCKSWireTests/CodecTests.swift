import NIOCore
import NetAddress
import Testing

@testable import SOCKSWire

func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// `port` in network order.
func be(_ port: UInt16) -> [UInt8] { [UInt8(port >> 8), UInt8(port & 0xff)] }

@Suite struct SOCKS4RequestTests {
    let connect: [UInt8] = [4, 1] + be(80) + [10, 1, 2, 3] + Array("alice".utf8) + [0]

    @Test func readsConnectWithUserID() throws {
        var input = buffer(connect)
        let request = try #require(try input.readSOCKS4Request())
        #expect(request == SOCKS4Request(command: .connect, port: 80, address: IPv4Address(10, 1, 2, 3), userID: "alice"))
        #expect(request.host == .ipv4(IPv4Address(10, 1, 2, 3)))
        #expect(input.readableBytes == 0)
    }

    @Test func waitsForEveryPrefixWithoutConsuming() throws {
        for length in 0..<connect.count {
            var input = buffer(Array(connect.prefix(length)))
            #expect(try input.readSOCKS4Request() == nil, "prefix \(length)")
            #expect(input.readerIndex == 0)
        }
    }

    @Test func socks4aNamesAHost() throws {
        var input = buffer([4, 1] + be(443) + [0, 0, 0, 7] + [0] + Array("example.org".utf8) + [0])
        let request = try #require(try input.readSOCKS4Request())
        #expect(request.hostName == "example.org")
        #expect(request.userID == "")
        #expect(request.host == .domain("example.org"))
    }

    @Test func zeroAddressIsNotSOCKS4a() throws {
        var input = buffer([4, 1] + be(443) + [0, 0, 0, 0] + [0] + Array("example.org".utf8) + [0])
        let request = try #require(try input.readSOCKS4Request())
        #expect(request.hostName == nil)
        #expect(request.host == .ipv4(.any))
        #expect(input.readableBytes == 12, "the name is not part of a SOCKS4 request")
    }

    @Test func waitsForTheSOCKS4aNameToEnd() throws {
        var input = buffer([4, 1] + be(443) + [0, 0, 0, 1] + [0] + Array("exam".utf8))
        #expect(try input.readSOCKS4Request() == nil)
        #expect(input.readerIndex == 0)
    }

    @Test func userIDAtTheCapIsAccepted() throws {
        var input = buffer([4, 1] + be(80) + [10, 0, 0, 1] + Array(repeating: UInt8(ascii: "u"), count: 255) + [0])
        #expect(try input.readSOCKS4Request()?.userID.count == 255)
    }

    @Test func userIDOverTheCapWithoutNULThrows() {
        var input = buffer([4, 1] + be(80) + [10, 0, 0, 1] + Array(repeating: UInt8(ascii: "u"), count: 256))
        #expect(throws: SOCKSWireError.userIDTooLong) { try input.readSOCKS4Request() }
    }

    @Test func hostNameOverTheCapWithoutNULThrows() {
        var input = buffer([4, 1] + be(80) + [0, 0, 0, 1, 0] + Array(repeating: UInt8(ascii: "h"), count: 256))
        #expect(throws: SOCKSWireError.hostNameTooLong) { try input.readSOCKS4Request() }
    }

    @Test func hostNameWithSpaceIsRefused() {
        var input = buffer([4, 1] + be(80) + [0, 0, 0, 1, 0] + Array("a b".utf8) + [0])
        #expect(throws: SOCKSWireError.invalidHostName) { try input.readSOCKS4Request() }
    }

    @Test func userIDMustBeUTF8() {
        var input = buffer([4, 1] + be(80) + [10, 0, 0, 1, 0xff, 0xfe, 0])
        #expect(throws: SOCKSWireError.userIDNotUTF8) { try input.readSOCKS4Request() }
    }

    @Test func unknownCommandThrows() {
        var input = buffer([4, 3] + be(80) + [10, 0, 0, 1, 0])
        #expect(throws: SOCKSWireError.unsupportedSOCKS4Command(3)) { try input.readSOCKS4Request() }
    }

    @Test func replyHasVersionZero() {
        var output = ByteBuffer()
        output.writeSOCKS4Reply(SOCKS4Reply(code: .granted, port: 0x1234, address: IPv4Address(1, 2, 3, 4)))
        #expect(Array(output.readableBytesView) == [0, 90, 0x12, 0x34, 1, 2, 3, 4])
    }
}

@Suite struct SOCKS5MessageTests {
    @Test func greeting() throws {
        var input = buffer([5, 2, 0, 2])
        #expect(try input.readSOCKS5Greeting() == SOCKS5Greeting(methods: [.noAuthentication, .usernamePassword]))
        var partial = buffer([5, 2, 0])
        #expect(try partial.readSOCKS5Greeting() == nil)
        #expect(partial.readerIndex == 0)
    }

    @Test func greetingWithZeroMethodsThrows() {
        var input = buffer([5, 0])
        #expect(throws: SOCKSWireError.noMethods) { try input.readSOCKS5Greeting() }
    }

    @Test func usernamePassword() throws {
        let bytes: [UInt8] = [1, 5] + Array("alice".utf8) + [3] + Array("pw!".utf8)
        var input = buffer(bytes)
        #expect(
            try input.readUsernamePasswordRequest() == UsernamePasswordRequest(username: "alice", password: Array("pw!".utf8)))
        for length in 0..<bytes.count {
            var partial = buffer(Array(bytes.prefix(length)))
            #expect(try partial.readUsernamePasswordRequest() == nil)
            #expect(partial.readerIndex == 0)
        }
    }

    @Test func usernamePasswordWrongVersionThrows() {
        var input = buffer([5, 1, UInt8(ascii: "a"), 1, UInt8(ascii: "b")])
        #expect(throws: SOCKSWireError.unsupportedSubnegotiationVersion(5)) { try input.readUsernamePasswordRequest() }
    }

    @Test func emptyUsernameThrows() {
        var input = buffer([1, 0, 1, UInt8(ascii: "b")])
        #expect(throws: SOCKSWireError.invalidUsername) { try input.readUsernamePasswordRequest() }
    }

    @Test(arguments: [
        ([1, 127, 0, 0, 1] as [UInt8], SOCKSHost.ipv4(IPv4Address(127, 0, 0, 1))),
        ([4] + [UInt8](repeating: 0, count: 15) + [1], SOCKSHost.ipv6(IPv6Address("::1")!)),
        ([3, 11] + Array("example.org".utf8), SOCKSHost.domain("example.org")),
    ])
    func requestAddressTypes(address: [UInt8], host: SOCKSHost) throws {
        let bytes: [UInt8] = [5, 1, 0] + address + be(8080)
        var input = buffer(bytes)
        #expect(try input.readSOCKS5Request() == SOCKS5Request(command: .connect, host: host, port: 8080))
        for length in 0..<bytes.count {
            var partial = buffer(Array(bytes.prefix(length)))
            #expect(try partial.readSOCKS5Request() == nil)
            #expect(partial.readerIndex == 0)
        }
    }

    @Test func unknownAddressTypeThrowsWithoutWaiting() {
        var input = buffer([5, 1, 0, 9])
        #expect(throws: SOCKSWireError.unsupportedAddressType(9)) { try input.readSOCKS5Request() }
    }

    @Test func unknownCommandThrows() {
        var input = buffer([5, 9, 0, 1])
        #expect(throws: SOCKSWireError.unsupportedCommand(9)) { try input.readSOCKS5Request() }
    }

    @Test func nonzeroReservedThrows() {
        var input = buffer([5, 1, 1, 1, 1, 2, 3, 4, 0, 80])
        #expect(throws: SOCKSWireError.nonzeroReserved(1)) { try input.readSOCKS5Request() }
    }

    @Test func emptyDomainThrows() {
        var input = buffer([5, 1, 0, 3, 0, 0, 80])
        #expect(throws: SOCKSWireError.invalidHostName) { try input.readSOCKS5Request() }
    }

    @Test func replies() {
        var output = ByteBuffer()
        output.writeSOCKS5Reply(SOCKS5Reply(code: .succeeded, host: .ipv4(IPv4Address(10, 0, 0, 1)), port: 1080))
        #expect(Array(output.readableBytesView) == [5, 0, 0, 1, 10, 0, 0, 1] + be(1080))

        output.clear()
        output.writeSOCKS5Reply(SOCKS5Reply(code: .connectionRefused, host: .ipv6(IPv6Address("::1")!), port: 1))
        #expect(Array(output.readableBytesView) == [5, 5, 0, 4] + [UInt8](repeating: 0, count: 15) + [1, 0, 1])

        output.clear()
        output.writeSOCKS5Reply(SOCKS5Reply(code: .succeeded, host: .domain("a.b"), port: 2))
        #expect(Array(output.readableBytesView) == [5, 0, 0, 3, 3, 97, 46, 98, 0, 2])

        output.clear()
        output.writeSOCKS5MethodSelection(.noAcceptableMethods)
        output.writeUsernamePasswordReply(success: false)
        #expect(Array(output.readableBytesView) == [5, 0xff, 1, 1])
    }
}

@Suite struct SOCKSHostTests {
    /// An address host gives its address (both families); a name gives none: only a
    /// resolver turns it into addresses.
    @Test func aHostsAddress() {
        #expect(SOCKSHost.ipv4(IPv4Address(10, 1, 2, 3)).address == IPAddress("10.1.2.3"))
        #expect(SOCKSHost(IPAddress("2001:db8::1")!).address == IPAddress("2001:db8::1"))
        #expect(SOCKSHost.domain("10.1.2.3").address == nil, "a name that looks like an address is still a name")
    }
}
