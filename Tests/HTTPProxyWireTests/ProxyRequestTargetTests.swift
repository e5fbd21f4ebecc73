import HTTPProxyWire
import NetAddress
import Testing

@Suite struct ProxyRequestTargetTests {
    func parse(_ method: String, _ target: String) throws(ProxyRequestError) -> ProxyRequestTarget {
        try ProxyRequestTarget.parse(method: method, target: target)
    }

    func status(_ method: String, _ target: String) -> ProxyStatus? {
        do {
            _ = try parse(method, target)
            return nil
        } catch {
            return error.status
        }
    }

    @Test func connectTargets() throws {
        #expect(try parse("CONNECT", "example.com:443") == .tunnel(host: .name("example.com"), port: 443))
        #expect(try parse("CONNECT", "Example.COM:443") == .tunnel(host: .name("example.com"), port: 443), "names lowercased")
        #expect(try parse("CONNECT", "10.0.0.1:22") == .tunnel(host: .address(IPAddress("10.0.0.1")!), port: 22))
        #expect(try parse("CONNECT", "[2001:db8::1]:443") == .tunnel(host: .address(IPAddress("2001:db8::1")!), port: 443))
        for bad in ["example.com", "example.com:", "example.com:0", "example.com:65536", "example.com:+443", ":443",
            "[2001:db8::1]", "[2001:db8::1:443", "[nonsense]:443", "exa mple.com:443", "exa%41mple.com:443",
            "bad\u{1B}name:443", "a@b:443", "example.com:4 43", "example.com:\u{FF14}43", "example.com:\u{0664}\u{0664}\u{0663}", String(repeating: "a", count: 254) + ":443"]
        {
            #expect(status("CONNECT", bad) == .badRequest, "\(bad)")
        }
        #expect(status("CONNECT", String(repeating: "a", count: 9000) + ":443") == .uriTooLong)
    }

    @Test func absoluteFormTargets() throws {
        #expect(try parse("GET", "http://example.com/a/b?c=d") == .forward(host: .name("example.com"), port: 80, originForm: "/a/b?c=d"))
        #expect(try parse("GET", "http://example.com") == .forward(host: .name("example.com"), port: 80, originForm: "/"))
        #expect(try parse("GET", "http://example.com?q") == .forward(host: .name("example.com"), port: 80, originForm: "/?q"))
        #expect(try parse("POST", "HTTP://10.1.2.3:8080/x#frag") == .forward(host: .address(IPAddress("10.1.2.3")!), port: 8080, originForm: "/x"))
        #expect(try parse("GET", "http://[::1]:81/") == .forward(host: .address(IPAddress("::1")!), port: 81, originForm: "/"))
        #expect(status("GET", "/index.html") == .badRequest, "origin-form: for an origin server")
        #expect(status("OPTIONS", "*") == .badRequest)
        #expect(status("GET", "https://example.com/") == .badRequest, "https goes through CONNECT")
        #expect(status("GET", "http://user:pw@example.com/") == .badRequest)
        #expect(status("GET", "http:///path") == .badRequest)
    }

    @Test func hostsPrintAsAuthorities() {
        #expect(ProxyTargetHost.address(IPAddress("2001:db8::1")!).description == "[2001:db8::1]")
        #expect(ProxyTargetHost.name("example.com").description == "example.com")
    }
}

@Suite struct ProxyReplyTests {
    @Test func establishedHasNoBody() {
        #expect(ProxyReply.established() == Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8))
        #expect(ProxyReply.established(minorVersion: 0) == Array("HTTP/1.0 200 Connection established\r\n\r\n".utf8))
    }

    @Test func statusesCarryALengthAndAChallenge() {
        let text = String(decoding: ProxyReply.status(.proxyAuthenticationRequired, challenges: [#"Basic realm="identgate""#]), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))
        #expect(text.contains("Proxy-Authenticate: Basic realm=\"identgate\"\r\n"))
        #expect(text.contains("Connection: close\r\n"))
        let parts = text.components(separatedBy: "\r\n\r\n")
        #expect(parts.count == 2)
        #expect(text.contains("Content-Length: \(parts[1].utf8.count)\r\n"))
        for status in ProxyStatus.allCases where status != .established {
            #expect(!status.text.isEmpty && !status.text.lowercased().contains("rule"), "\(status)")
        }
    }
}

@Suite struct BasicCredentialsTests {
    @Test func readsWhatClientsSend() throws {
        // curl --proxy-user alice:s3cr:et
        #expect(try BasicCredentials.parse("Basic YWxpY2U6czNjcjpldA==") == BasicCredentials(user: "alice", password: Array("s3cr:et".utf8)))
        #expect(try BasicCredentials.parse("basic   YWxpY2U6  ")?.user == "alice", "scheme case and spaces")
        #expect(try BasicCredentials.parse("Negotiate YIIC") == nil, "another scheme")
        #expect(try BasicCredentials.parse("Basic") == nil)
    }

    @Test func refusesWhatIsNotUserAndPassword() {
        for bad in ["Basic !!!!", "Basic YWxpY2U=", "Basic OnB3", "Basic " + String(repeating: "QUFB", count: 300), "Basic G3g6eQ=="] {
            #expect(throws: ProxyRequestError.self, "\(bad)") { _ = try BasicCredentials.parse(bad) }
        }
    }
}
