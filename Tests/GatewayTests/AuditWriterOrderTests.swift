import AuditLog
import Foundation
import Testing

@testable import Gateway

/// The audit log's order is its time order, however many event loops queue records at
/// once: `audit show` merges several logs by time and relies on it (test_fleet caught two
/// records a millisecond out of order when each loop read the clock before the lock), and
/// however many times the log is reopened meanwhile.
@Suite struct AuditWriterOrderTests {
    @Test func recordsQueuedFromManyThreadsAreInTimeOrder() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("audit-order-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("audit.jsonl").path
        let audit = try AuditWriter(path: path)
        audit.start()
        let threads = 4
        let each = 10_000
        let done = DispatchGroup()
        for thread in 0..<threads {
            done.enter()
            Thread {
                for index in 0..<each {
                    audit.record(.sessionEnd(session: UInt64(thread * each + index), reason: "closed"))
                }
                done.leave()
            }.start()
        }
        // Log rotations meanwhile (SIGUSR1): each file's first record goes ahead of records
        // queued before it, and must not carry a later time than theirs.
        // (Awaited, not waited for: a blocked test thread is one of the two cores the
        // other suites' tasks run on.)
        for _ in 0..<20 {
            audit.reopen()
            try await Task.sleep(for: .milliseconds(10))
        }
        await withCheckedContinuation { finished in done.notify(queue: .global()) { finished.resume() } }
        audit.shutdown()
        let times = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").compactMap { line in
            line.range(of: #""time":""#).map { String(line[$0.upperBound...].prefix(24)) }
        }
        #expect(times.count >= threads * each)
        let inversions = zip(times, times.dropFirst()).filter { $0 > $1 }.count
        #expect(inversions == 0, "\(inversions) records earlier than the one before them")
    }
}
