import Foundation
import Testing

@testable import AuditLog

/// The hand-written reader must read every line exactly as JSONDecoder does, or hand it
/// back (nil) so that JSONDecoder reads it.
@Suite struct AuditRecordReadingTests {
    /// Fields set at random, with strings that need every kind of escape; a failure
    /// prints the line, which is all it takes to reproduce it.
    @Test func readsWhatTheWriterWritesForEveryEvent() throws {
        var generator = SystemRandomNumberGenerator()
        var chain = AuditChain()
        for event in AuditRecord.Event.allCases {
            for _ in 0..<50 {
                let record = Self.randomRecord(event, using: &generator)
                let line = try chain.line(for: record)
                let expected = try JSONDecoder().decode(AuditRecord.self, from: line)
                let read = try #require(AuditRecord(jsonLine: line), "\(String(decoding: line, as: UTF8.self))")
                #expect(read == expected)
            }
        }
    }

    /// Valid JSON the writer never produces is read the same, or left to JSONDecoder;
    /// what JSONDecoder refuses, the reader refuses too.
    @Test func agreesWithJSONDecoderOnOtherShapes() {
        let lines = [
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p"}"#,
            #" { "prev" : "p" , "event" : "session-end" , "time" : "t" , "seq" : 0 , "v" : 1 } "#,
            #"{"v":1,"seq":3,"time":"t\u00e9\ud834\udd1e\/","event":"decision","prev":"p","client":null}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","listen":[]}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","ident":{"outcome":"timeout"}}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","unknown":5}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","reply":9.0}"#,
            #"{"v":1,"seq":-1,"time":"t","event":"decision","prev":"p"}"#,
            #"{"v":1,"seq":3,"time":"t","event":"no-such-event","prev":"p"}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision"}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","destinationPort":70000}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","ident":{"userID":"x"}}"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p"} trailing"#,
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p","seq":4}"#,
            #"{"v":1,"seq":03,"time":"t","event":"decision","prev":"p"}"#,
            #"{"v":1,"seq":3,"time":"\ud800","event":"decision","prev":"p"}"#,
            "{\"v\":1,\"seq\":3,\"time\":\"a\u{1}b\",\"event\":\"decision\",\"prev\":\"p\"}",
            #"{"v":1,"seq":3,"time":"t","event":"decision","prev":"p""#,
            "",
        ]
        for text in lines {
            let line = Data(text.utf8)
            let expected = try? JSONDecoder().decode(AuditRecord.self, from: line)
            if let read = AuditRecord(jsonLine: line) {
                #expect(read == expected, "\(text)")
            }
            #expect(AuditRecord.decode(line: line, fallback: JSONDecoder()) == expected, "\(text)")
        }
    }

    static func randomRecord(_ event: AuditRecord.Event, using generator: inout some RandomNumberGenerator) -> AuditRecord {
        func text() -> String {
            let pieces = ["a", "Z", "9", " ", "\"", "\\", "/", "\n", "\t", "\r", "\u{1}", "\u{7F}", "é", "𝄞", ":", ",", "{"]
            return String(
                (0..<Int.random(in: 0...12, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined())
        }
        func maybe<T>(_ value: @autoclosure () -> T) -> T? { Bool.random(using: &generator) ? value() : nil }
        var record = AuditRecord(event: event)
        record.time = text()
        record.seed = maybe(text())
        record.previousFile = maybe(text())
        record.version = maybe(text())
        record.listen = maybe((0..<Int.random(in: 0...3, using: &generator)).map { _ in text() })
        record.policyFile = maybe(text())
        record.policySHA256 = maybe(text())
        record.rules = maybe(Int.random(in: 0...100_000, using: &generator))
        record.tests = maybe(Int.random(in: 0...100, using: &generator))
        record.reason = maybe(text())
        record.user = maybe(text())
        record.verified = maybe(text())
        record.session = maybe(UInt64.random(in: 0...UInt64.max, using: &generator))
        record.client = maybe(text())
        record.listener = maybe(text())
        record.socks = maybe(text())
        record.command = maybe(text())
        record.destination = maybe(text())
        record.destinationPort = maybe(UInt16.random(in: 0...UInt16.max, using: &generator))
        record.resolved = maybe(text())
        record.claimedUser = maybe(text())
        record.auth = maybe(text())
        record.authOutcome = maybe(text())
        record.ident = maybe(
            AuditRecord.IdentRecord(
                outcome: text(), userID: maybe(text()), opsys: maybe(text()), raw: maybe(text()), detail: maybe(text()),
                durationMs: maybe(Int.random(in: 0...5000, using: &generator))))
        record.ruleLine = maybe(Int.random(in: 1...10_000, using: &generator))
        record.ruleLabel = maybe(text())
        record.limitLine = maybe(Int.random(in: 1...10_000, using: &generator))
        record.limitLabel = maybe(text())
        record.gssMechanism = maybe(text())
        record.protection = maybe(text())
        record.verdict = maybe(text())
        record.reply = maybe(Int.random(in: 0...93, using: &generator))
        record.requestTime = maybe(Int64.random(in: Int64.min...Int64.max, using: &generator))
        record.bytesFromClient = maybe(UInt64.random(in: 0...UInt64.max, using: &generator))
        record.bytesToClient = maybe(UInt64.random(in: 0...UInt64.max, using: &generator))
        record.durationMs = maybe(Int.random(in: 0...1_000_000, using: &generator))
        return record
    }
}
