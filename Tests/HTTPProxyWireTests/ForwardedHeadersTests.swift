import HTTPProxyWire
import Testing

@Suite struct ForwardedHeadersTests {
    func names(_ fields: [ForwardedHeaders.Field]) -> [String] { fields.map(\.name) }

    @Test func hopByHopFieldsAndWhatConnectionNamesAreRemoved() {
        let fields: [ForwardedHeaders.Field] = [
            ("Host", "old"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic YTpi"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
            ("Upgrade", "websocket"), ("Trailer", "X"), ("Accept", "*/*"), ("Content-Length", "3"), ("Via", "1.0 other"),
        ]
        let out = ForwardedHeaders.forwarded(fields, via: "1.1 gw", host: "example.com")
        #expect(names(out) == ["Host", "Accept", "Content-Length", "Via", "Via"])
        #expect(out.first?.value == "example.com")
        #expect(out.last?.value == "1.1 gw")
        let response = ForwardedHeaders.forwarded([("connection", "close"), ("Transfer-Encoding", "chunked")], via: "1.1 gw")
        #expect(names(response) == ["Transfer-Encoding", "Via"], "framing kept; Host left alone without one")
    }

    @Test func whoClosesAfterTheMessage() {
        #expect(ForwardedHeaders.closesAfter([("Connection", "close")], minorVersion: 1))
        #expect(!ForwardedHeaders.closesAfter([], minorVersion: 1))
        #expect(ForwardedHeaders.closesAfter([], minorVersion: 0), "HTTP/1.0 closes by default")
        #expect(!ForwardedHeaders.closesAfter([("Proxy-Connection", "Keep-Alive")], minorVersion: 0))
        #expect(ForwardedHeaders.closesAfter([("Connection", "Upgrade, close")], minorVersion: 1))
    }

    @Test func onlyPlainChunkedFramingIsForwarded() {
        #expect(ForwardedHeaders.framingIsForwardable([("Content-Length", "5")]))
        #expect(ForwardedHeaders.framingIsForwardable([("Transfer-Encoding", "Chunked")]))
        #expect(!ForwardedHeaders.framingIsForwardable([("Transfer-Encoding", "gzip, chunked")]))
    }
}
