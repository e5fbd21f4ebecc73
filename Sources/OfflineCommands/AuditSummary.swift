import AccessPolicy
import ArgumentParser
import AuditLog
import Foundation
import NetAddress
import PrintableText

struct AuditSummary: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary",
        abstract: "Totals, top users and destinations, denials by rule and reply, ident outcomes, busiest hours."
    )

    @Argument(help: "The log files, oldest first.")
    var files: [String]

    @Option(help: "How many entries each top list shows.")
    var top = 10

    func validate() throws {
        guard top >= 0 else { throw ValidationError("--top: \(top) is not a count (0 or more)") }
    }

    func run() throws {
        let decoder = JSONDecoder()
        var records = 0
        var decisions = 0
        var allowed = 0
        var bytes: (up: UInt64, down: UInt64) = (0, 0)
        var users: [String: Int] = [:]
        var destinations: [String: Int] = [:]
        var denials: [String: Int] = [:]
        var idents: [String: Int] = [:]
        var hours: [String: Int] = [:]
        var instances: [String: Int] = [:]
        try AuditFiles(paths: files).forEachLineMerged { line, _, _ in
            records += 1
            guard let record = AuditRecord.decode(line: line, fallback: decoder) else { return true }
            switch record.event {
            case .decision:
                decisions += 1
                if let instance = record.instance { instances[instance, default: 0] += 1 }
                users[record.claimedUser ?? record.ident?.userID ?? "(none)", default: 0] += 1
                destinations["\(record.destination ?? "?"):\(record.destinationPort ?? 0)", default: 0] += 1
                hours[String(record.time.prefix(13)) + ":00", default: 0] += 1
                if let ident = record.ident { idents[ident.outcome, default: 0] += 1 }
                if record.verdict == "allow" {
                    allowed += 1
                } else {
                    denials["\(record.decidedBy), reply \(record.reply ?? -1)", default: 0] += 1
                }
            case .sessionEnd:
                bytes.up += record.bytesFromClient ?? 0
                bytes.down += record.bytesToClient ?? 0
            default:
                break
            }
            return true
        }
        print("records: \(records); decisions: \(decisions), allowed \(allowed), denied \(decisions - allowed)")
        print("bytes relayed: \(bytes.up) from clients, \(bytes.down) to clients")
        func list(_ title: String, _ counts: [String: Int], byKey: Bool = false) {
            print("\n\(title):")
            let sorted = counts.sorted { byKey ? $0.key < $1.key : ($0.value, $1.key) > ($1.value, $0.key) }
            for (key, count) in sorted.prefix(top) { print("  \(String(count).padding(8)) \(DisplayText.escaped(key))") }
            if counts.isEmpty { print("  (none)") }
        }
        list("top users", users)
        list("top destinations", destinations)
        list("denials by rule and reply", denials)
        list("ident outcomes", idents)
        list("busiest hours (UTC)", hours)
        if instances.count > 1 { list("decisions by instance", instances, byKey: true) }
    }
}
