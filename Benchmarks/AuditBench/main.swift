import AuditLog
import Foundation

// Writes a chained audit log of N decision and session-end records, like a busy
// gateway's, for timing `identgate audit verify/show/summary`.
// Usage: audit-bench FILE RECORDS

let arguments = CommandLine.arguments
guard arguments.count == 3, let count = Int(arguments[2]) else {
    print("usage: audit-bench FILE RECORDS")
    exit(2)
}
guard FileManager.default.createFile(atPath: arguments[1], contents: nil) else {
    print("audit-bench: cannot create \(arguments[1])")
    exit(1)
}
guard let handle = FileHandle(forWritingAtPath: arguments[1]) else { exit(1) }
var chain = AuditChain()
var start = AuditRecord(event: .chainStart)
start.seed = chain.lastHash
var buffer = Data()
buffer += try chain.line(for: start) + Data([10])
let users = ["alice", "bob", "carol", "dave", "erin"]
let destinations = ["www.example.com", "api.example.net", "git.corp.example", "10.1.2.3", "mirror.example.org"]
var session: UInt64 = 0
for index in 1..<count {
    var record: AuditRecord
    if index % 2 == 1 {
        session += 1
        record = AuditRecord(event: .decision)
        record.session = session
        record.client = "10.20.\(index % 250).\(index / 250 % 250):\(40000 + index % 20000)"
        record.listener = "10.0.0.1:1080"
        record.socks = index % 3 == 0 ? "socks4" : "socks5"
        record.command = "connect"
        record.destination = destinations[index % destinations.count]
        record.destinationPort = [443, 80, 22][index % 3]
        record.claimedUser = users[index % users.count]
        record.auth = "none"
        record.authOutcome = "none"
        record.verdict = index % 7 == 0 ? "deny" : "allow"
        record.reply = index % 7 == 0 ? 2 : 0
        record.ruleLine = 10 + index % 5
        record.requestTime = 1_764_576_000 + Int64(index / 10)
    } else {
        record = AuditRecord(event: .sessionEnd)
        record.session = session
        record.reason = "closed"
        record.bytesFromClient = UInt64(index % 5000)
        record.bytesToClient = UInt64(index % 90000)
        record.durationMs = index % 3000
    }
    record.time =
        "2026-11-29T\(String(format: "%02d", index / 100_000 % 24)):\(String(format: "%02d", index / 1000 % 60)):00.000Z"
    buffer += try chain.line(for: record) + Data([10])
    if buffer.count > 1 << 20 {
        handle.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}
handle.write(buffer)
try handle.close()
