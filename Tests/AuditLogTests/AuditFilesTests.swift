import Foundation
import Testing

@testable import AuditLog

@Suite struct AuditFilesTests {
    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("audit-files-\(UUID()).jsonl").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Lines longer than the 64 KiB read chunk, empty lines, and a last line with no
    /// newline (a cut tail) all come out whole and numbered.
    @Test func everyLineWholeAndNumbered() throws {
        let lines = [
            "first", "", String(repeating: "b", count: 70_000), "ccc", String(repeating: "d", count: 65_535), "cut tail",
        ]
        let path = try write(lines.joined(separator: "\n"))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var seen: [(String, Int)] = []
        try AuditFiles(paths: [path]).forEachLine { line, file, number in
            #expect(file == path)
            seen.append((String(decoding: line, as: UTF8.self), number))
            return true
        }
        #expect(seen.map(\.0) == lines)
        #expect(seen.map(\.1) == Array(1...lines.count))
    }

    @Test func stopsWhenAsked() throws {
        let first = try write("1\n2\n3\n")
        let second = try write("4\n")
        defer {
            try? FileManager.default.removeItem(atPath: first)
            try? FileManager.default.removeItem(atPath: second)
        }
        var seen: [String] = []
        try AuditFiles(paths: [first, second]).forEachLine { line, _, _ in
            seen.append(String(decoding: line, as: UTF8.self))
            return seen.count < 2
        }
        #expect(seen == ["1", "2"])
    }
}
