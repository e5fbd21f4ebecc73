import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

/// The direct driver's HTTP head reader: NIOHTTP1's decoder in an `EmbeddedChannel`, a
/// fresh decoder per head. Synchronous tests: the reader belongs to the thread that made it.
@Suite struct HTTPHeadReaderTests {
    func read(_ reader: HTTPHeadReader, _ text: String) -> HTTPHeadReader.Outcome {
        reader.read(ByteBuffer(string: text))
    }

    @Test func aWholeHeadAndWhatFollowsIt() throws {
        let reader = HTTPHeadReader()
        guard case .head(let head, let rest) = read(reader, "CONNECT 10.0.0.1:443 HTTP/1.0\r\nHost: x\r\n\r\n\u{16}\u{03}\u{01}hello") else {
            Issue.record("no head")
            return
        }
        #expect(head.method == .CONNECT && head.uri == "10.0.0.1:443" && head.version == .http1_0)
        #expect(head.headers["Host"] == ["x"])
        #expect(rest.map { String(buffer: $0) } == "\u{16}\u{03}\u{01}hello")
        // The same reader again, with a fresh decoder: nothing of the first head is left.
        guard case .head(let second, nil) = read(reader, "CONNECT 10.0.0.2:22 HTTP/1.1\r\n\r\n") else {
            Issue.record("no second head")
            return
        }
        #expect(second.uri == "10.0.0.2:22" && second.headers.count == 0)
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
            guard case .head = read(reader, "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n") else {
                Issue.record("the reader did not recover")
                continue
            }
        }
    }
}
