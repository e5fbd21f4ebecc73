import Foundation
import Testing

@testable import AuditLog

@Suite struct AuditRecordTests {
    func sample() -> AuditRecord {
        var record = AuditRecord(event: .decision)
        record.time = AuditChain.timestamp()
        record.session = 7
        record.client = "10.1.2.3:40000"
        record.listener = "[::1]:1080"
        record.socks = "socks4a"
        record.command = "connect"
        record.destination = "www.example.com"
        record.destinationPort = 443
        record.claimedUser = "o\"brien\\\n\t\u{1}ü𝄞\u{7F}\r"
        record.auth = "none"
        record.authOutcome = "none"
        record.ident = .init(outcome: "user-id", userID: "alice:x", opsys: "UNIX", raw: "1,2:USERID:UNIX:alice:x", durationMs: 3)
        record.ruleLine = 12
        record.ruleLabel = "staff \"web\""
        record.verdict = "allow"
        record.reply = 90
        record.requestTime = -5
        record.listen = ["127.0.0.1:1080", "[::1]:1080"]
        record.httpMethod = "GET"
        record.httpTarget = "http://example.com/a?b=\"c\"\n"
        return record
    }

    @Test func handWrittenJSONReadsBackEqual() throws {
        var chain = AuditChain()
        let line = try chain.line(for: sample())
        var decoded = try JSONDecoder().decode(AuditRecord.self, from: line)
        #expect(decoded.seq == 0)
        decoded.prev = ""
        #expect(decoded == sample().withTime(decoded.time))
        #expect(!line.contains(0x0A), "one line")
    }

    @Test func chainLinksEveryRecordToTheOneBefore() throws {
        var chain = AuditChain()
        var start = AuditRecord(event: .chainStart)
        start.seed = chain.lastHash
        let lines = try [start, sample(), sample()].map { try chain.line(for: $0) }
        var verifier = ChainVerifier()
        for (index, line) in lines.enumerated() { try verifier.check(line, at: "log:\(index + 1)") }
        #expect(verifier.lastHash == chain.lastHash)

        var edited = lines
        edited[1] = Data(
            String(decoding: lines[1], as: UTF8.self).replacingOccurrences(of: "\"reply\":90", with: "\"reply\":91").utf8)
        var check = ChainVerifier()
        #expect(throws: ChainVerifier.Broken.self) {
            for (index, line) in edited.enumerated() { try check.check(line, at: "log:\(index + 1)") }
        }
    }

    @Test func timestampsAreISO8601WithMilliseconds() {
        let time = AuditChain.timestamp()
        #expect(time.count == 24)
        #expect(time.hasSuffix("Z"))
        #expect(time.dropFirst(10).first == "T")
    }

    /// A forwarded request's target is kept whole up to 2,048 bytes, else cut at a
    /// character boundary with "…".
    @Test func longTargetsAreCut() {
        #expect(HTTPRequestLine.recorded("http://a/") == "http://a/")
        let long = "http://a/" + String(repeating: "é", count: 2000)
        let kept = HTTPRequestLine.recorded(long)
        #expect(kept.utf8.count <= HTTPRequestLine.maximumTargetLength)
        #expect(kept.hasSuffix("…") && long.hasPrefix(String(kept.dropLast())))
    }
}

extension AuditRecord {
    func withTime(_ time: String) -> AuditRecord {
        var copy = self
        copy.time = time
        return copy
    }

}
