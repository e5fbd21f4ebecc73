import AccessPolicy
import ArgumentParser
import AuditLog
import CommandSupport
import Foundation
import NetAddress

struct AuditReport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "An HTML report: the chain's state, requests and denials over time, top users, clients and destinations.",
        discussion: """
            One self-contained file (inline SVG and CSS; nothing is fetched when it is opened), \
            charts first and the same numbers in tables. The filters are those of show and apply \
            to decisions. The log is read once, in bounded memory.
            """
    )

    @Argument(help: "The log files, oldest first (several instances' files are merged by time).")
    var files: [String]

    @Option(help: ArgumentHelp("Where to write the report.", valueName: "file"))
    var html: String

    @Option(
        help: ArgumentHelp(
            "The public key of --audit-signing-key: the report says what signed checkpoints cover.", valueName: "file"))
    var publicKey: String?

    @OptionGroup var filter: RecordFilter

    @Option(help: "How many entries each top list shows.")
    var top = 10

    func validate() throws {
        guard (1...1000).contains(top) else { throw ValidationError("--top: \(top) is not a count from 1 to 1000") }
    }

    func run() throws {
        let decoder = JSONDecoder()
        var tally = ReportTally()
        var chains: [String: ChainVerifier] = [:]
        var checkpoints: [String: CheckpointVerifier] = [:]
        var broken: [String: String] = [:]
        var unreadable: String?
        let key: AuditVerifyingKey?
        do {
            key = try publicKey.map(AuditVerifyingKey.init(contentsOfFile:))
        } catch {
            throw FailedStart(message: "\(error)")
        }
        do {
            try AuditFiles(paths: files).forEachLineMerged { line, file, number in
                guard let record = AuditRecord.decode(line: line, fallback: decoder) else {
                    if unreadable == nil { unreadable = "\(file):\(number): not an audit record" }
                    return true
                }
                let instance = record.instance ?? ""
                if broken[instance] == nil {
                    do {
                        try chains[instance, default: ChainVerifier()].check(line, at: "\(file):\(number)")
                        if let key { try checkpoints[instance, default: CheckpointVerifier(key: key)].check(line, at: "\(file):\(number)") }
                    } catch {
                        broken[instance] = "\(error)"
                    }
                }
                tally.add(record, matches: try filter.matches(record))
                return true
            }
        } catch let error as ValidationError {
            throw error
        } catch {
            throw FailedStart(message: "\(error)")
        }
        var verification = chains.keys.sorted().map { instance in
            let chain = chains[instance] ?? ChainVerifier()
            var text =
                broken[instance].map { "broken: \($0)" }
                ?? "intact: \(chain.records) records; last hash \(chain.lastHash ?? "-")"
            if broken[instance] == nil {
                if let signed = checkpoints[instance] {
                    text +=
                        signed.lastVerified.map { "; \(signed.verified) signed checkpoints verified, the last at \($0)" }
                        ?? "; no checkpoint signed by key \(signed.key.keyID)"
                    if signed.uncovered > 0 { text += "; \(signed.uncovered) records after it no signature covers" }
                } else {
                    text += " (a cut tail leaves no broken link: compare the last hash with one kept elsewhere, or give --public-key)"
                }
            }
            return (instance: instance, text: text, intact: broken[instance] == nil)
        }
        if let unreadable { verification.append((instance: "", text: "broken: \(unreadable)", intact: false)) }
        let page = ReportPage(
            tally: tally, files: files, verification: verification, filters: filter.summary, top: top
        ).render()
        do {
            try Data(page.utf8).write(to: URL(fileURLWithPath: html), options: .atomic)
        } catch {
            throw FailedStart(message: "\(html): cannot write: \(error.localizedDescription)")
        }
        let intact = verification.allSatisfy(\.intact)
        print("\(html): \(tally.decisions) decisions from \(tally.records) records; chain \(intact ? "intact" : "BROKEN")")
    }
}
