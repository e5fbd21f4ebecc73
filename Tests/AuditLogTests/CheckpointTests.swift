import AuditLog
import Foundation
import Testing

/// Signed checkpoints: a tail rewritten with a recomputed chain passes the chain check
/// but not the key's; a wrong key, a forged checkpoint and a checkpoint moved to another
/// log are each caught with their line.
@Suite struct CheckpointTests {
    /// A log of `count` decisions with a checkpoint after every `every`, as lines.
    func log(_ key: AuditSigningKey, count: Int, every: Int, instance: String = "gw", chain: inout AuditChain) -> [Data] {
        var bytes: [UInt8] = []
        var first = AuditRecord(event: .chainStart)
        first.seed = chain.lastHash
        first.time = "2026-12-02T12:00:00.000Z"
        chain.append(first, to: &bytes)
        for index in 1...count {
            var record = AuditRecord(event: .decision)
            record.time = "2026-12-02T12:00:01.000Z"
            record.client = "10.1.0.\(index % 250):4000"
            record.verdict = "allow"
            record.instance = instance
            chain.append(record, to: &bytes)
            if index % every == 0 {
                chain.appendCheckpoint(signedBy: key, instance: instance, time: "2026-12-02T12:00:02.000Z", to: &bytes)
            }
        }
        return bytes.split(separator: UInt8(ascii: "\n")).map { Data($0) }
    }

    /// Runs both verifiers; the first failure's text, or nil, with the checkpoint verifier.
    func verify(_ lines: [Data], key: AuditVerifyingKey) -> (failure: String?, checkpoints: CheckpointVerifier) {
        var chain = ChainVerifier()
        var checkpoints = CheckpointVerifier(key: key)
        do {
            for (index, line) in lines.enumerated() {
                try chain.check(line, at: "log:\(index + 1)")
                try checkpoints.check(line, at: "log:\(index + 1)")
            }
        } catch {
            return ("\(error.description)", checkpoints)
        }
        return (nil, checkpoints)
    }

    @Test func anIntactLogVerifiesAndSaysWhatIsUncovered() {
        let key = AuditSigningKey.generate()
        var chain = AuditChain()
        let lines = log(key, count: 25, every: 10, chain: &chain)
        let (failure, checkpoints) = verify(lines, key: key.verifyingKey)
        #expect(failure == nil)
        #expect(checkpoints.verified == 2)
        #expect(checkpoints.lastVerified == "log:23")
        #expect(checkpoints.uncovered == 5)
    }

    @Test func aRewrittenTailWithARecomputedChainIsCaughtOnlyWithTheKey() throws {
        let key = AuditSigningKey.generate()
        var chain = AuditChain()
        let lines = log(key, count: 25, every: 10, chain: &chain)
        // The attacker rewrites record 5 (before two checkpoints) and recomputes every
        // hash after it, copying the checkpoints as they are (no key to re-sign them).
        var rewritten = AuditChain(lastHash: AuditChain.hash(lines[3]), nextSequence: 4)
        var bytes: [UInt8] = []
        for (index, line) in lines.enumerated().dropFirst(4) {
            var record = try #require(AuditRecord(jsonLine: line))
            if index == 4 { record.client = "10.9.9.9:4000" }
            rewritten.append(record, to: &bytes)
        }
        let forged = Array(lines.prefix(4)) + bytes.split(separator: UInt8(ascii: "\n")).map { Data($0) }
        var chainOnly = ChainVerifier()
        for (index, line) in forged.enumerated() { try chainOnly.check(line, at: "log:\(index + 1)") }
        #expect(chainOnly.records == lines.count, "the chain alone is fooled")
        let (failure, _) = verify(forged, key: key.verifyingKey)
        #expect(failure?.hasPrefix("log:12: checkpoint signature does not verify") == true, "\(failure ?? "none")")
    }

    @Test func aWrongKeyAForgedAndAMovedCheckpointAreCaught() throws {
        let key = AuditSigningKey.generate()
        var chain = AuditChain()
        let lines = log(key, count: 12, every: 10, chain: &chain)
        // Another key.
        let other = AuditSigningKey.generate()
        #expect(verify(lines, key: other.verifyingKey).failure?.contains("not by the given key") == true)
        // A checkpoint made with another key but claiming this key's id.
        var forgedChain = AuditChain(lastHash: AuditChain.hash(lines[10]), nextSequence: 11)
        var bytes: [UInt8] = []
        forgedChain.appendCheckpoint(signedBy: other, instance: "gw", time: "2026-12-02T12:00:02.000Z", to: &bytes)
        var forged = try #require(AuditRecord(jsonLine: Data(bytes.dropLast())))
        forged.keyID = key.verifyingKey.keyID
        var relinked = AuditChain(lastHash: AuditChain.hash(lines[10]), nextSequence: 11)
        let forgedLine = try relinked.line(for: forged)
        let (failure, _) = verify(Array(lines.prefix(11)) + [forgedLine], key: key.verifyingKey)
        #expect(failure?.hasPrefix("log:12: checkpoint signature does not verify") == true, "\(failure ?? "none")")
        // A genuine checkpoint of another log (another instance), linked into this one.
        var elsewhere = AuditChain()
        let otherLog = log(key, count: 10, every: 10, instance: "gw2", chain: &elsewhere)
        var moved = try #require(AuditRecord(jsonLine: otherLog[11]))
        var relinkedMoved = AuditChain(lastHash: AuditChain.hash(lines[10]), nextSequence: 11)
        moved.instance = "gw2"
        let movedLine = try relinkedMoved.line(for: moved)
        #expect(verify(Array(lines.prefix(11)) + [movedLine], key: key.verifyingKey).failure?.hasPrefix("log:12: checkpoint signature") == true)
    }

    @Test func keyFilesRoundTripAndBadOnesAreRefused() throws {
        let key = AuditSigningKey.generate()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let privatePath = folder.appendingPathComponent("k").path
        let publicPath = folder.appendingPathComponent("k.pub").path
        try key.fileText.write(toFile: privatePath, atomically: true, encoding: .utf8)
        try key.verifyingKey.fileText.write(toFile: publicPath, atomically: true, encoding: .utf8)
        #expect(try AuditSigningKey(contentsOfFile: privatePath).verifyingKey.keyID == key.verifyingKey.keyID)
        #expect(try AuditVerifyingKey(contentsOfFile: publicPath).keyID == key.verifyingKey.keyID)
        #expect(throws: (any Error).self) { try AuditSigningKey(contentsOfFile: publicPath) }
        #expect(throws: (any Error).self) { try AuditVerifyingKey(contentsOfFile: privatePath) }
        try "identgate-audit-ed25519-public AAAA\n".write(toFile: publicPath, atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try AuditVerifyingKey(contentsOfFile: publicPath) }
    }
}
