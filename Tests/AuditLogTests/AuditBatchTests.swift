import AuditLog
import Foundation
import Testing

/// The audit writer's pure parts (issue 24: it had no Swift tests): where a log's chain
/// goes on, a torn last line refused, and the batch encoder's chaining and checkpoints.
@Suite struct AuditBatchTests {
    func temporaryFile(_ contents: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "audit-batch-\(UUID().uuidString).jsonl"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(contents)))
        return path
    }

    func decision(_ index: Int) -> AuditRecord {
        var record = AuditRecord(event: .decision)
        record.time = "2026-12-04T12:00:00.000Z"
        record.client = "10.1.0.\(index % 250):4000"
        record.verdict = "allow"
        return record
    }

    @Test func aLogsChainGoesOnFromItsLastLine() throws {
        var encoder = AuditBatchEncoder(chain: AuditChain(), instance: "gw", signingKey: nil)
        let bytes = encoder.encode((1...3).map(decision))
        let path = try temporaryFile(bytes)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let continued = try #require(try AuditTail.chain(continuing: path))
        #expect(continued.nextSequence == 3)
        #expect(continued.lastHash == encoder.chain.lastHash)
        // No file, or an empty one: a new chain.
        #expect(try AuditTail.chain(continuing: path + ".missing") == nil)
        let empty = try temporaryFile([])
        defer { try? FileManager.default.removeItem(atPath: empty) }
        #expect(try AuditTail.chain(continuing: empty) == nil)
    }

    /// A crash mid-write leaves half a line: nothing is appended after it (the log would
    /// not verify), and the error says what to do.
    @Test func aTornLastLineIsRefused() throws {
        var encoder = AuditBatchEncoder(chain: AuditChain(), instance: nil, signingKey: nil)
        var bytes = encoder.encode((1...2).map(decision))
        bytes += Array(#"{"v":1,"seq":2,"event":"decis"#.utf8)
        let path = try temporaryFile(bytes)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let error = #expect(throws: AuditTail.NotARecord.self) { try AuditTail.chain(continuing: path) }
        #expect(error?.description.contains("identgate audit verify") == true)
    }

    @Test func everyLineIsStampedAndChained() throws {
        var encoder = AuditBatchEncoder(chain: AuditChain(), instance: "gw-2", signingKey: nil)
        let first = encoder.encode([decision(1)])
        let second = encoder.encode([decision(2), decision(3)])
        var verifier = ChainVerifier()
        for (number, line) in (first + second).split(separator: UInt8(ascii: "\n")).enumerated() {
            try verifier.check(Data(line), at: "line \(number + 1)")
            let record = try JSONDecoder().decode(AuditRecord.self, from: Data(line))
            #expect(record.instance == "gw-2")
        }
        #expect(encoder.chain.nextSequence == 3)
    }

    /// With a key: a checkpoint after every `AuditCheckpoint.every` records, one when the
    /// oldest uncovered record is `interval` old, and one at the close.
    @Test func checkpointsByCountByAgeAndAtTheClose() throws {
        let key = AuditSigningKey.generate()
        let start = ContinuousClock.now
        var encoder = AuditBatchEncoder(chain: AuditChain(), instance: nil, signingKey: key)
        func checkpoints(_ bytes: [UInt8]) -> Int {
            bytes.split(separator: UInt8(ascii: "\n")).filter { line in
                (try? JSONDecoder().decode(AuditRecord.self, from: Data(line)))?.event == .checkpoint
            }.count
        }
        #expect(checkpoints(encoder.encode((1...AuditCheckpoint.every).map(decision), now: start)) == 1)
        #expect(encoder.uncovered == 0)
        #expect(checkpoints(encoder.encode([decision(1)], now: start)) == 0)
        #expect(!encoder.checkpointDue(closing: false, now: start))
        #expect(encoder.checkpointDue(closing: false, now: start + AuditCheckpoint.interval))
        #expect(checkpoints(encoder.encode([], now: start + AuditCheckpoint.interval)) == 1)
        #expect(checkpoints(encoder.encode([decision(2)], now: start)) == 0)
        #expect(checkpoints(encoder.encode([], closing: true, now: start)) == 1)
        #expect(!encoder.checkpointDue(closing: true, now: start))
    }
}
