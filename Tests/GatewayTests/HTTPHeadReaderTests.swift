import HTTPHead
import NIOCore
import NIOHTTP1
import Testing

/// The direct driver's HTTP head reader: NIOHTTP1's decoder in an `EmbeddedChannel`, a
/// fresh decoder per head. Synchronous tests: the reader belongs to the thread that made it.
@Suite struct HTTPHeadReaderTests {
    func read(_ reader: HTTPHeadReader, _ text: String) -> HTTPHeadReader.Outcome {
        reader.read(ByteBuffer(string: text))
    }

    @Test func aWholeHeadAndWhatFollowsIt() throws {
        let reader = HTTPHeadReader()
        guard case .connect(let head, let rest) = read(reader, "CONNECT 10.0.0.1:443 HTTP/1.0\r\nHost: x\r\n\r\n\u{16}\u{03}\u{01}hello") else {
            Issue.record("no head")
            return
        }
        #expect(head.method == .CONNECT && head.uri == "10.0.0.1:443" && head.version == .http1_0)
        #expect(head.headers["Host"] == ["x"])
        #expect(rest.map { String(buffer: $0) } == "\u{16}\u{03}\u{01}hello")
        // The same reader again, with a fresh decoder: nothing of the first head is left.
        guard case .connect(let second, nil) = read(reader, "CONNECT 10.0.0.2:22 HTTP/1.1\r\n\r\n") else {
            Issue.record("no second head")
            return
        }
        #expect(second.uri == "10.0.0.2:22" && second.headers.count == 0)
    }

    /// Only the first request counts: a CONNECT pipelined behind another request is never
    /// taken for it (the fuzzer found the reader reporting the last head), and what follows
    /// a CONNECT is its tunnel's bytes, whatever they look like.
    @Test func theFirstRequestIsTheOneRead() {
        let reader = HTTPHeadReader()
        let behind = read(reader, "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nCONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n")
        guard case .other(let first) = behind else {
            Issue.record("\(behind)")
            return
        }
        #expect(first.method == .GET)
        let ahead = read(reader, "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\nGET http://a/ HTTP/1.1\r\n\r\n")
        guard case .connect(let head, let rest) = ahead else {
            Issue.record("\(ahead)")
            return
        }
        #expect(head.uri == "10.0.0.1:443")
        #expect(rest.map { String(buffer: $0) } == "GET http://a/ HTTP/1.1\r\n\r\n")
    }

    @Test func aHeadNotYetEndedIsIncomplete() {
        let reader = HTTPHeadReader()
        for text in ["C", "CONNECT 10.0.0.1:443 HTTP/1.1\r\n", "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r"] {
            guard case .incomplete = read(reader, text) else {
                Issue.record("\(text.debugDescription) is not incomplete")
                continue
            }
        }
    }

    /// What NIOHTTP1 refuses is refused here, and the reader still serves the next head.
    @Test func malformedHeadsAreUnreadable() {
        let reader = HTTPHeadReader()
        for text in [
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\nno colon\r\n\r\n",
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "CONNECT 10.0.0.1:443 HTTP/9.9\r\n\r\n",
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\nX: \u{01}\r\n\r\n",
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\n" + String(repeating: "X-Long: \(String(repeating: "a", count: 1000))\r\n", count: 90) + "\r\n",
        ] {
            guard case .unreadable = read(reader, text) else {
                Issue.record("\(text.prefix(60).debugDescription) was read")
                continue
            }
            guard case .connect = read(reader, "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n") else {
                Issue.record("the reader did not recover")
                continue
            }
        }
    }
}
