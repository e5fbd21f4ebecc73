import Testing

@testable import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct NetAddressTests {
    @Test func ipv4RoundTrip() {
        #expect(IPv4Address("10.1.2.3") == IPv4Address(10, 1, 2, 3))
        #expect(IPv4Address("10.1.2.3")?.description == "10.1.2.3")
        for bad in ["10.1.2", "10.1.2.256", "010.1.2.3x", "", "1.2.3.4/8"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
    }

    @Test func ipv6RoundTripAndMapped() {
        #expect(IPv6Address("::1")?.description == "::1")
        #expect(IPv6Address("fd00::1:2")?.octets.last == 2)
        #expect(IPAddress("::ffff:127.0.0.1")?.unmapped == .v4(IPv4Address(127, 0, 0, 1)))
        #expect(IPAddress("[::1]") == .v6(IPv6Address(high: 0, low: 1)))
    }

    @Test func networks() throws {
        let corp = try #require(IPNetwork("10.0.0.0/8"))
        #expect(corp.contains(IPAddress("10.255.0.1")!))
        #expect(!corp.contains(IPAddress("11.0.0.1")!))
        #expect(corp.contains(IPAddress("::ffff:10.0.0.1")!), "mapped clients match IPv4 rules")
        #expect(IPNetwork("10.1.2.3/8")?.description == "10.0.0.0/8")
        let v6 = try #require(IPNetwork("fd00::/8"))
        #expect(v6.contains(IPAddress("fd12::1")!))
        #expect(!v6.contains(IPAddress("fe80::1")!))
        #expect(IPNetwork("2001:db8::/127")!.contains(IPAddress("2001:db8::1")!))
        #expect(!IPNetwork("2001:db8::/127")!.contains(IPAddress("2001:db8::2")!))
        #expect(IPNetwork("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(IPNetwork("10.0.0.0/33") == nil)
        #expect(IPNetwork("10.0.0.0/x") == nil)
    }

    @Test func ranges() throws {
        #expect(IPNetwork("10.0.0.0/8")?.v4Range == IPv4Address(10, 0, 0, 0).value...IPv4Address(10, 255, 255, 255).value)
        #expect(IPNetwork("0.0.0.0/0")?.v4Range == 0...UInt32.max)
        #expect(IPNetwork("10.0.0.0/8")?.v6Range == nil)
        let v6 = try #require(IPNetwork("2001:db8::/126")?.v6Range)
        #expect(v6.lowerBound == IPv6Address("2001:db8::")!.value)
        #expect(v6.upperBound == IPv6Address("2001:db8::3")!.value)
        #expect(IPNetwork("::/0")?.v6Range == 0...UInt128.max)
        #expect(
            IPNetwork("127.0.0.1")?.mappedRange == IPNetwork("::ffff:127.0.0.1")?.mappedRange, "IPv4 lies in the mapped space")
    }

    @Test func endpoints() {
        #expect(IPEndpoint("127.0.0.1:1080")?.port == 1080)
        #expect(IPEndpoint("[::1]:1080")?.address == IPAddress("::1"))
        #expect(IPEndpoint("[::1]:1080")?.description == "[::1]:1080")
        for bad in ["::1:1080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000", "localhost:80", "[::1]1080"] {
            #expect(IPEndpoint(bad) == nil, "\(bad)")
        }
    }

    @Test func socketAddressesRoundTrip() {
        for text in ["127.0.0.1:1080", "255.255.255.255:65535", "0.0.0.0:0", "[::1]:1080", "[2001:db8::7]:443"] {
            let endpoint = IPEndpoint(text)!
            var storage = sockaddr_storage()
            endpoint.posixAddress.withSockAddr { address, length in
                withUnsafeMutableBytes(of: &storage) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length)))
                }
            }
            #expect(IPEndpoint(storage) == endpoint, "\(text)")
            #expect(IPEndpoint(storage)?.description == text)
        }
        #expect(IPEndpoint(sockaddr_storage()) == nil, "AF_UNSPEC is no IP endpoint")
    }
}
