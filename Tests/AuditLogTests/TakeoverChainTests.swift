import Foundation
import Testing

@testable import AuditLog

/// Across a seamless upgrade the chain forks at the takeover record: the successor goes on
/// in the shared file, the draining process in a file of its own (chain-branch).
@Suite struct TakeoverChainTests {
    private func lines(_ records: [AuditRecord], chain: inout AuditChain) throws -> [Data] {
        try records.map { try chain.line(for: $0) }
    }

    @Test func bothBranchesHangFromTheTakeoverRecord() throws {
        var shared = AuditChain()
        var sharedLines = try lines(
            [.chainStart(seed: shared.lastHash), .gatewayStop(reason: "x"), .takeover(successor: "pid 2", drainFile: "f")], chain: &shared)
        var branch = shared
        sharedLines += try lines([.chainContinue(previousFile: "a"), .gatewayStop(reason: "successor")], chain: &shared)
        let branchLines = try lines([.chainBranch(previousFile: "a"), .gatewayStop(reason: "drained")], chain: &branch)

        var verifier = ChainVerifier()
        for (number, line) in sharedLines.enumerated() { try verifier.check(line, at: "a:\(number + 1)") }
        #expect(verifier.takeovers.count == 1)
        let prev = try #require(AuditRecord(jsonLine: branchLines[0])?.prev)
        let takeover = try #require(verifier.takeovers[prev])
        var drained = ChainVerifier(branchingFrom: prev, sequence: takeover.sequence, location: takeover.location)
        for (number, line) in branchLines.enumerated() { try drained.check(line, at: "b:\(number + 1)") }
        #expect(drained.records == 2)

        // A draining file that does not start at a takeover record has nothing to hang from.
        var elsewhere = AuditChain()
        let stray = try lines([.chainBranch(previousFile: "a")], chain: &elsewhere)
        #expect(verifier.takeovers[AuditRecord(jsonLine: stray[0])?.prev ?? ""] == nil)
    }

    @Test func filesSplitIntoSharedAndBranches() throws {
        var chain = AuditChain()
        let shared = try lines([.chainStart(seed: chain.lastHash), .takeover(successor: "pid 2", drainFile: "d")], chain: &chain)
        var branchChain = chain
        let branch = try lines([.chainBranch(previousFile: "s")], chain: &branchChain)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("takeover-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let sharedPath = folder.appendingPathComponent("audit.jsonl").path
        let branchPath = folder.appendingPathComponent("audit.jsonl.drain-1").path
        try Data(shared.map { $0 + Data("\n".utf8) }.joined()).write(to: URL(fileURLWithPath: sharedPath))
        try Data(branch.map { $0 + Data("\n".utf8) }.joined()).write(to: URL(fileURLWithPath: branchPath))
        let split = try AuditFiles(paths: [branchPath, sharedPath]).splitBranches()
        #expect(split.shared == [sharedPath])
        #expect(split.branches == [branchPath])
    }
}
