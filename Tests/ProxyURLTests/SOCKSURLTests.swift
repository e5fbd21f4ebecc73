import NetAddress
import Testing

import ProxyURL

@Suite struct SOCKSURLTests {
    @Test func theFormsClientsWrite() throws {
        let four = try SOCKSURL.parse("socks4://10.0.0.1:1080")
        #expect(four.scheme == .socks4 && four.host == .address(.v4(IPv4Address(10, 0, 0, 1))) && four.port == 1080)
        let five = try SOCKSURL.parse("socks5://root:123@10.0.0.2:1080")
        #expect(five.user == "root" && five.password == "123" && five.scheme == .socks5)
        #expect(five.description == "socks5://root@10.0.0.2:1080", "no password in what is shown")
        let fourA = try SOCKSURL.parse("socks4a://85.224.100.1:9010")
        #expect(fourA.scheme.proxyResolves && fourA.port == 9010)
        let named = try SOCKSURL.parse("SOCKS5H://gw.corp.example/")
        #expect(named.host == .name("gw.corp.example") && named.port == 1080 && named.scheme == .socks5h)
        let six = try SOCKSURL.parse("socks5://[2001:db8::1]:1081")
        #expect(six.host == .address(IPAddress("2001:db8::1")!) && six.port == 1081)
        #expect(six.description == "socks5://[2001:db8::1]:1081")
        let plain = try SOCKSURL.parse("socks://proxy.example")
        #expect(plain.scheme == .socks4 && plain.writtenAsPlainSOCKS, "as curl and browsers read it")
        let escaped = try SOCKSURL.parse("socks5h://al%40ice:p%3Ass@gw:1080")
        #expect(escaped.user == "al@ice" && escaped.password == "p:ss")
        #expect(escaped.description == "socks5h://al%40ice@gw:1080")
    }

    @Test(arguments: [
        ("10.0.0.1:1080", 1, "a SOCKS URL starts with"),
        ("http://10.0.0.1:1080", 1, "unknown scheme 'http'"),
        ("socks5://10.0.0.1:99999", 19, "'99999' is not a port"),
        ("socks5://10.0.0.1:0", 19, "'0' is not a port"),
        ("socks5://:1080", 10, "the proxy's host is missing"),
        ("socks5://2001:db8::1", 10, "an IPv6 address goes in brackets"),
        ("socks5://[2001:db8::1", 10, "an IPv6 address in brackets needs its ']'"),
        ("socks5://[2001:db8::1]x", 23, "expected ':PORT' after ']'"),
        ("socks5://u%zz@h", 10, "the user is empty or not valid percent-encoding"),
        ("socks://user@gw:1080/10.0.0.0/255.0.0.0", 21, "a path is not supported"),
        ("socks5://bad host", 10, "'bad host' is not a host name"),
    ])
    func errorsSayWhere(text: String, column: Int, message: String) {
        #expect(throws: SOCKSURL.ParseError.self) { try SOCKSURL.parse(text) }
        do {
            _ = try SOCKSURL.parse(text)
        } catch {
            #expect(error.offset + 1 == column, "\(error)")
            #expect(error.message.hasPrefix(message), "\(error)")
        }
    }
}
