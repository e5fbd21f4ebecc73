import AuditLog
import Foundation
import Testing

/// Several gateways' logs read together: grouped by the instance each file names, each
/// instance's files in the order given, the instances merged by record time.
@Suite struct MergedInstancesTests {
    /// A log of `instance` with one record at each of `seconds` past 12:00:00.
    func log(_ instance: String?, seconds: [Int], in folder: URL, name: String) throws -> String {
        var chain = AuditChain()
        var bytes: [UInt8] = []
        for (index, second) in seconds.enumerated() {
            var record = AuditRecord(event: index == 0 ? .chainStart : .decision)
            record.instance = instance
            record.time = String(format: "2026-12-02T12:00:%02d.000Z", second)
            if index == 0 { record.seed = chain.lastHash }
            chain.append(record, to: &bytes)
        }
        let path = folder.appendingPathComponent(name).path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func folder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("merge-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func instancesAreGroupedAndMergedByTime() throws {
        let folder = try folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let a = try log("gw-a", seconds: [1, 4, 5, 9], in: folder, name: "a.jsonl")
        let b = try log("gw-b", seconds: [2, 3, 6], in: folder, name: "b.jsonl")
        let groups = try AuditFiles(paths: [a, b]).byInstance()
        #expect(groups.map(\.instance) == ["gw-a", "gw-b"])
        var order: [String] = []
        try AuditFiles(paths: [b, a]).forEachLineMerged { line, file, _ in
            let record = try #require(AuditRecord(jsonLine: line))
            order.append("\(record.time.dropFirst(17).prefix(2)) \(URL(fileURLWithPath: file).lastPathComponent)")
            return true
        }
        #expect(order == ["01 a.jsonl", "02 b.jsonl", "03 b.jsonl", "04 a.jsonl", "05 a.jsonl", "06 b.jsonl", "09 a.jsonl"])
    }

    @Test func oneInstanceReadsAsBefore() throws {
        let folder = try folder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let old = try log(nil, seconds: [1, 2], in: folder, name: "old.jsonl")
        let new = try log(nil, seconds: [3], in: folder, name: "new.jsonl")
        #expect(try AuditFiles(paths: [old, new]).byInstance().count == 1)
        var count = 0
        try AuditFiles(paths: [old, new]).forEachLineMerged { _, _, _ in
            count += 1
            return count < 2
        }
        #expect(count == 2, "stopping early is honoured")
    }
}
