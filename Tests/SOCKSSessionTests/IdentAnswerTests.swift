import AccessPolicy
import IdentProtocol
import SOCKSSession
import Testing

@Suite struct IdentAnswerTests {
    let query = IdentQuery(serverPort: 6193, clientPort: 23)

    func answer(_ text: String) -> IdentAnswer? {
        IdentReply.answer(to: Array(text.utf8), for: query)
    }

    /// RFC 1413's meanings, decided here and nowhere else.
    @Test func replyMeanings() {
        #expect(answer("6193,23:USERID:UNIX:alice\r\n")?.outcome == .userID("alice"))
        #expect(answer("6193,23:USERID:UNIX:alice\r\n")?.opsys == "UNIX")
        #expect(answer("6193,23:USERID:OTHER:1001\r\n")?.outcome == .failure(.other), "OTHER names no user")
        #expect(answer("6193,23:ERROR:NO-USER\r\n")?.outcome == .failure(.noUser))
        #expect(answer("6193,23:ERROR:HIDDEN-USER\r\n")?.outcome == .failure(.hidden))
        #expect(answer("6193,23:ERROR:INVALID-PORT\r\n")?.outcome == .failure(.invalidPort))
        #expect(answer("6193,23:ERROR:X-LOCAL\r\n")?.outcome == .failure(.unknownError))
        #expect(answer("6193,24:USERID:UNIX:alice\r\n")?.outcome == .failure(.malformed), "another port pair")
        #expect(answer("6193,23:USERID:UNIX:alice\r\n")?.rawReply == "6193,23:USERID:UNIX:alice")
        #expect(answer("6193,23:USER") == nil, "no line yet")
        #expect(answer(String(repeating: "A", count: 1001))?.outcome == .failure(.malformed))
        #expect(IdentReply.closedEarly(after: Array("6193".utf8)).rawReply == "6193")
        #expect(IdentReply.closedEarly(after: []).outcome == .failure(.malformed))
    }
}
