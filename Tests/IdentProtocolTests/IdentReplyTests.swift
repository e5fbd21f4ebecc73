import Testing

@testable import IdentProtocol

@Suite struct IdentReplyTests {
    let query = IdentQuery(serverPort: 6193, clientPort: 23)

    func parse(_ text: String) -> Result<IdentResponse, IdentParseFailure> {
        IdentReply.parse(Array(text.utf8), for: query)
    }

    @Test func queryLine() {
        #expect(query.line == "6193 , 23\r\n")
    }

    @Test(arguments: [
        ("6193, 23 : USERID : UNIX : stjohns", IdentResponse.userID("stjohns", opsys: "UNIX", charset: nil)),
        ("6193,23:USERID:UNIX:alice", .userID("alice", opsys: "UNIX", charset: nil)),
        ("  6193 ,23  :  USERID  : UNIX , UTF-8 :  bob", .userID("bob", opsys: "UNIX", charset: "UTF-8")),
        ("6193,23:USERID:UNIX:dom:ain:user", .userID("dom:ain:user", opsys: "UNIX", charset: nil)),
        ("6193,23:USERID:UNIX:trailing  ", .userID("trailing  ", opsys: "UNIX", charset: nil)),
        ("6193,23:USERID:OTHER:7a3f9c", .userID("7a3f9c", opsys: "OTHER", charset: nil)),
        ("6193,23:userid:unix:lower", .userID("lower", opsys: "unix", charset: nil)),
        ("6193, 23 : ERROR : NO-USER", .error("NO-USER")),
        ("6193,23:ERROR:HIDDEN-USER", .error("HIDDEN-USER")),
        ("6193,23:ERROR:INVALID-PORT", .error("INVALID-PORT")),
        ("6193,23:ERROR:UNKNOWN-ERROR", .error("UNKNOWN-ERROR")),
        ("6193,23:ERROR: X-PRIVATE ", .error("X-PRIVATE")),
    ])
    func wellFormedReplies(line: String, expected: IdentResponse) throws {
        #expect(try parse(line).get() == expected)
    }

    @Test(arguments: [
        ("6193,24:USERID:UNIX:alice", "not 6193 , 23"),
        ("23,6193:USERID:UNIX:alice", "not 6193 , 23"),
        ("6193:USERID:UNIX:alice", "is not two numbers"),
        ("x,23:USERID:UNIX:alice", "is not two numbers"),
        ("6193,23:USERID:UNIX", "four fields"),
        ("6193,23:USERID::alice", "without an opsys"),
        ("6193,23:USERID:UNIX:   ", "empty user-id"),
        ("6193,23:ERROR", "fewer than three fields"),
        ("6193,23:ERROR:", "without a type"),
        ("6193,23:MAYBE:UNIX:alice", "unknown reply type"),
        ("", "fewer than three fields"),
        ("6193,23:USERID:UNIX:" + String(repeating: "u", count: 513), "over 512 octets"),
    ])
    func hostileReplies(line: String, reason: String) {
        guard case .failure(let failure) = parse(line) else {
            Issue.record("accepted: \(line)")
            return
        }
        #expect(failure.description.contains(reason), "\(failure)")
    }

    @Test func notUTF8() {
        guard case .failure(let failure) = IdentReply.parse([0x36, 0x3A, 0xFF, 0xFE], for: query) else {
            Issue.record("accepted")
            return
        }
        #expect(failure.description == "not UTF-8 text")
    }

    @Test func lineSearch() {
        #expect(IdentReply.firstLine(in: Array("6193,23:ERROR:NO-USER\r\n".utf8)) == .line(Array("6193,23:ERROR:NO-USER".utf8)))
        #expect(
            IdentReply.firstLine(in: Array("6193,23:ERROR:NO-USER\n".utf8)) == .line(Array("6193,23:ERROR:NO-USER".utf8)),
            "bare LF")
        #expect(IdentReply.firstLine(in: Array("6193,23:ERR".utf8)) == .needMoreBytes, "split over reads")
        #expect(IdentReply.firstLine(in: [UInt8](repeating: 65, count: 1000)) == .needMoreBytes)
        #expect(IdentReply.firstLine(in: [UInt8](repeating: 65, count: 1001)) == .tooLong)
        #expect(IdentReply.firstLine(in: Array("a\nb\n".utf8)) == .line([97]), "only the first line counts")
    }
}
