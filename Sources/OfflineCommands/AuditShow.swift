import AccessPolicy
import ArgumentParser
import AuditLog
import Foundation
import NetAddress
import PrintableText

/// A key for a session across gateway restarts and instances: session numbers start
/// again at each start, and each instance numbers its own.
struct SessionKey: Hashable {
    var instance: String?
    var run: Int
    var session: UInt64
}

struct AuditShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Who went where, and which rule let them: decisions as a table, or as JSON lines."
    )

    @Argument(help: "The log files, oldest first.")
    var files: [String]

    @OptionGroup var filter: RecordFilter

    @Flag(help: "Print the matching decision records as JSON lines, with the session's bytes.")
    var json = false

    func run() throws {
        let decoder = JSONDecoder()
        let reader = AuditFiles(paths: files)
        // First pass: the sessions of matching decisions, and their bytes.
        var wanted: [SessionKey: (up: UInt64, down: UInt64)?] = [:]
        var runs: [String?: Int] = [:]
        try reader.forEachLineMerged { line, _, _ in
            guard let record = AuditRecord.decode(line: line, fallback: decoder) else { return true }
            if record.event == .gatewayStart { runs[record.instance, default: 0] += 1 }
            if let session = record.session {
                let key = SessionKey(instance: record.instance, run: runs[record.instance] ?? 0, session: session)
                if try filter.matches(record) {
                    wanted[key] = .some(nil)
                } else if record.event == .sessionEnd, wanted[key] != nil {
                    wanted[key] = (record.bytesFromClient ?? 0, record.bytesToClient ?? 0)
                }
            }
            return true
        }
        // Second pass: print them in log order.
        if !json {
            print(Self.row(["TIME", "USER", "IDENT", "CLIENT", "DESTINATION", "VERDICT", "REPLY", "RULE", "BYTES UP/DOWN"]))
        }
        runs = [:]
        var shown = 0
        try reader.forEachLineMerged { line, _, _ in
            guard let record = AuditRecord.decode(line: line, fallback: decoder) else { return true }
            if record.event == .gatewayStart { runs[record.instance, default: 0] += 1 }
            guard record.event == .decision, let session = record.session, try filter.matches(record) else { return true }
            let bytes = wanted[SessionKey(instance: record.instance, run: runs[record.instance] ?? 0, session: session)] ?? nil
            shown += 1
            if json {
                var object = try JSONSerialization.jsonObject(with: line) as? [String: Any] ?? [:]
                if let bytes {
                    object["bytesFromClient"] = bytes.up
                    object["bytesToClient"] = bytes.down
                }
                // Foundation leaves C1 and bidirectional controls raw: a client-chosen name
                // could then drive the reader's terminal.
                print(
                    JSONText.escapingInvisibles(
                        String(
                            decoding: try JSONSerialization.data(
                                withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)))
            } else {
                let ident = record.ident.map { $0.userID ?? $0.outcome } ?? "-"
                let destination =
                    "\(record.destination ?? "?"):\(record.destinationPort ?? 0)" + (record.resolved.map { " (\($0))" } ?? "")
                let rule = record.decidedBy
                let moved = bytes.map { "\($0.up)/\($0.down)" } ?? "-"
                // An HTTP request's method and target, and the groups that decided, close the line.
                var request = record.httpMethod.map { "  " + DisplayText.escaped([$0, record.httpTarget].compactMap { $0 }.joined(separator: " ")) }
                if let user = record.groupsUser {
                    let groups = record.groups.map { $0.isEmpty ? "no group" : $0.joined(separator: ",") } ?? record.groupsNote ?? "?"
                    request = (request ?? "") + "  " + DisplayText.escaped("groups of \(user): \(groups)")
                }
                print(
                    Self.row([
                        String(record.time.prefix(23)), record.claimedUser ?? "-", ident, record.client ?? "?", destination,
                        record.verdict ?? "?", record.reply.map(String.init) ?? "?", rule, moved,
                    ]) + (request ?? ""))
            }
            return true
        }
        if !json { print("\(shown) decisions") }
    }

    static let widths = [23, 10, 10, 21, 34, 7, 5, 26, 0]

    /// Cells hold what clients and identds chose: escaped before they reach a terminal.
    static func row(_ cells: [String]) -> String {
        zip(cells.map(DisplayText.escaped), widths).map { cell, width in width == 0 ? cell : cell.padding(width) }
            .joined(separator: " ")
    }
}
