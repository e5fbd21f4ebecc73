import AccessPolicy
import ArgumentParser
import AuditLog
import Foundation
import NetAddress

public struct Audit: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Review the audit log: verify, show, summary, replay.",
        discussion: """
            Give files oldest first (rotated ones before the current one); .gz files are read as they are. \
            The logs of several gateways (a fleet: each record names its --instance) may be given together: \
            each instance's files are one chain, verified on their own; show, summary and replay merge the \
            instances in time order.
            """,
        subcommands: [AuditVerify.self, AuditShow.self, AuditSummary.self, AuditReplay.self, AuditReport.self, AuditKeygen.self]
    )
}

struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the hash chain; report the first broken link with its line.",
        discussion: """
            Every record carries the SHA-256 of the one before it, so an edited, deleted, \
            inserted or reordered record breaks the chain where it stands. Records cut from \
            the end leave no broken link: keep the printed last hash elsewhere and pass it \
            with --last to detect that.
            """
    )

    @Argument(help: "The log files, oldest first.")
    var files: [String]

    @Option(help: ArgumentHelp("The last hash printed by an earlier verify (or kept elsewhere).", valueName: "sha256"))
    var last: String?

    @Option(
        help: ArgumentHelp(
            "The public key of --audit-signing-key (audit keygen): check every checkpoint's signature.", valueName: "file"))
    var publicKey: String?

    func run() throws {
        let groups: [(instance: String, paths: [String])]
        do {
            groups = try AuditFiles(paths: files).byInstance()
        } catch {
            throw FailedStart(message: "\(error)")
        }
        if last != nil, groups.count > 1 {
            throw ValidationError("--last names one chain's end; these files hold \(groups.count) instances: verify each on its own")
        }
        let key: AuditVerifyingKey?
        do {
            key = try publicKey.map(AuditVerifyingKey.init(contentsOfFile:))
        } catch {
            throw FailedStart(message: "\(error)")
        }
        var broken = false
        for group in groups {
            // Each instance's files are a chain of their own.
            let name = groups.count > 1 ? "instance \(DisplayText.escaped(group.instance.isEmpty ? "(unnamed)" : group.instance)): " : ""
            var verifier = ChainVerifier()
            var checkpoints = key.map(CheckpointVerifier.init)
            do {
                try AuditFiles(paths: group.paths).forEachLine { line, file, number in
                    try verifier.check(line, at: "\(file):\(number)")
                    try checkpoints?.check(line, at: "\(file):\(number)")
                    return true
                }
            } catch let failure as ChainVerifier.Broken {
                print(name + failure.description)
                broken = true
                continue
            } catch {
                throw FailedStart(message: "\(error)")
            }
            if let last, let lastHash = verifier.lastHash, !lastHash.hasPrefix(last.lowercased()) {
                print("the chain is intact but ends at \(lastHash), not at \(last): records were cut from the end, or added")
                throw ExitCode(1)
            }
            print("\(name)\(verifier.records) records, chain intact")
            print("\(name.isEmpty ? "" : "  ")last hash: \(verifier.lastHash ?? "-")")
            if let checkpoints {
                let indent = name.isEmpty ? "" : "  "
                if let place = checkpoints.lastVerified {
                    print("\(indent)\(checkpoints.verified) checkpoints verified with key \(checkpoints.key.keyID); the last at \(place)")
                } else {
                    print("\(indent)no checkpoint signed by key \(checkpoints.key.keyID): nothing is proven beyond the chain itself")
                }
                if checkpoints.uncovered > 0 {
                    print(
                        "\(indent)\(checkpoints.uncovered) records after it are not covered by a signature "
                            + "(a rewritten or cut tail there cannot be told from the real one)"
                            + (checkpoints.uncovered > AuditCheckpoint.every ? "; more than a checkpoint's worth: checkpoints are missing" : ""))
                }
            }
        }
        print("(keep the last hash elsewhere: records cut from the end can only be detected against it)")
        if broken { throw ExitCode(1) }
    }
}

/// The filters of `show`, applied to decision records.
struct RecordFilter: ParsableArguments {
    @Option(help: "Claimed user or identd user-id.")
    var user: String?

    @Option(help: ArgumentHelp("Client network, e.g. 10.0.0.0/8.", valueName: "cidr"))
    var from: String?

    @Option(help: ArgumentHelp("Destination: a host name, .domain, or a network.", valueName: "host|cidr"))
    var to: String?

    @Option(help: "Destination port.")
    var port: UInt16?

    @Option(help: ArgumentHelp("The deciding rule: its line number or label.", valueName: "line|label"))
    var rule: String?

    @Option(help: "allow or deny.")
    var verdict: String?

    @Option(help: "The reply code (90-93 for SOCKS4, 0-8 for SOCKS5).")
    var reply: Int?

    @Option(help: ArgumentHelp("From this time on (UTC, a prefix of 2026-11-29T13:05:00).", valueName: "time"))
    var since: String?

    @Option(help: ArgumentHelp("Before this time (UTC, a prefix of 2026-11-29T13:05:00).", valueName: "time"))
    var until: String?

    /// The filters given, as the command line said them (for the report's heading).
    var summary: String {
        let given: [(String, String?)] = [
            ("--user", user), ("--from", from), ("--to", to), ("--port", port.map(String.init)), ("--rule", rule),
            ("--verdict", verdict), ("--reply", reply.map(String.init)), ("--since", since), ("--until", until),
        ]
        return given.compactMap { name, value in value.map { "\(name) \($0)" } }.joined(separator: " ")
    }

    func matches(_ record: AuditRecord) throws -> Bool {
        guard record.event == .decision else { return false }
        if let user, record.claimedUser != user, record.ident?.userID != user { return false }
        if let from {
            guard let network = IPNetwork(from) else { throw ValidationError("--from: '\(from)' is not a network") }
            guard let client = record.client.flatMap(IPEndpoint.init), network.contains(client.address) else { return false }
        }
        if let to {
            if let network = IPNetwork(to) {
                let address = (record.resolved ?? record.destination).flatMap(IPAddress.init)
                guard let address, network.contains(address) else { return false }
            } else {
                let name = (record.destination ?? "").lowercased()
                let wanted = to.lowercased()
                let matched = wanted.hasPrefix(".") ? (name.hasSuffix(wanted) || "." + name == wanted) : name == wanted
                guard matched else { return false }
            }
        }
        if let port, record.destinationPort != port { return false }
        if let rule {
            guard record.ruleLine.map(String.init) == rule || record.ruleLabel == rule else { return false }
        }
        if let verdict, record.verdict != verdict { return false }
        if let reply, record.reply != reply { return false }
        if let since, record.time < since { return false }
        if let until, record.time >= until { return false }
        return true
    }
}

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
                print(
                    Self.row([
                        String(record.time.prefix(23)), record.claimedUser ?? "-", ident, record.client ?? "?", destination,
                        record.verdict ?? "?", record.reply.map(String.init) ?? "?", rule, moved,
                    ]))
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

struct AuditReplay: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Decide every recorded request again under another policy; list what would change.",
        discussion: """
            Each decision record holds the facts the engine used, and identd's answer when one \
            was asked. A request the old policy did not ask identd about but the new one would \
            is decided as if identd were unreachable, and marked so.
            """
    )

    @Option(help: ArgumentHelp("The policy to replay under.", valueName: "file"))
    var policy: String

    @Argument(help: "The log files, oldest first.")
    var files: [String]

    func run() throws {
        let compilation = try loadCompilation(policy)
        guard let newPolicy = compilation.policy else {
            for error in compilation.errors { print(error) }
            throw ExitCode(1)
        }
        // One engine for the whole log; each record's recorded ident answer is given per decision.
        let engine = PolicyEngine(policy: newPolicy)
        let decoder = JSONDecoder()
        var replayed = 0
        var changed = 0
        // Record by record, so a large log is replayed in bounded memory.
        try AuditFiles(paths: files).forEachLineMerged { line, _, _ in
            guard let record = AuditRecord.decode(line: line, fallback: decoder), let facts = record.requestFacts else {
                return true
            }
            // A limit's refusal depends on the load at the time, which the log does not
            // hold: the rules' verdict is what is replayed (a UDP ASSOCIATE refused by a
            // limit had none).
            if record.limitLine != nil, record.ruleLine == nil { return true }
            let recordedVerdict = record.limitLine != nil ? Decision.Verdict.allow.rawValue : record.verdict
            let recorded = record.ident?.identOutcome
            let decision =
                try engine.decideImmediately(facts)
                ?? Self.decideWaiting(engine, facts) { _, _ in IdentAnswer(recorded ?? .failure(.unavailable)) }
            replayed += 1
            let newReply = Int(decision.replyCode(for: facts.version))
            guard decision.verdict.rawValue != recordedVerdict || (record.limitLine == nil && newReply != record.reply) else {
                return true
            }
            changed += 1
            let before =
                "\(record.verdict ?? "?") \(record.reply ?? -1) (\(record.ruleLine.map { "line \($0)" } ?? "final deny"))"
            let after = "\(decision.verdict.rawValue) \(newReply) (\(decision.rule?.line.map { "line \($0)" } ?? "final deny"))"
            let unknownIdent = recorded == nil && decision.identAnswer != nil ? " [ident not recorded]" : ""
            print(
                "\(record.time.prefix(23)) \(record.client ?? "?") user \(record.claimedUser ?? "-") -> "
                    + "\(record.destination ?? "?"):\(record.destinationPort ?? 0): \(before) -> \(after)\(unknownIdent)")
            return true
        }
        print("\(replayed) decisions replayed under \(policy); \(changed) would change")
    }

    /// A decision that needs identd goes through the async path; its answer is canned.
    private static func decideWaiting(_ engine: PolicyEngine, _ facts: RequestFacts, ident: @escaping IdentLookup) throws
        -> Decision
    {
        let result = DecisionBox()
        try waitFor { result.decision = await engine.decide(facts, identLookup: ident) }
        return result.decision ?? Decision.timedOut
    }
}

private final class DecisionBox: @unchecked Sendable {
    var decision: Decision?
}

extension AuditRecord {
    /// What decided a decision record, for the review tables: `line 4 "staff web"`, a
    /// limit that refused what a rule allowed (`limit line 9 "per client"`), or the
    /// implicit final deny.
    var decidedBy: String {
        func named(_ line: Int, _ label: String?) -> String { "line \(line)" + (label.map { " \"\($0)\"" } ?? "") }
        if let limitLine { return "limit " + named(limitLine, limitLabel) }
        return ruleLine.map { named($0, ruleLabel) } ?? "final deny"
    }
}

struct AuditKeygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make an Ed25519 key pair for signed checkpoints (run --audit-signing-key, verify --public-key).",
        discussion: """
            The private key file is created readable by its owner only (give it to root: the \
            gateway reads it before dropping privileges); the public one is for auditors. \
            Neither file is overwritten.
            """
    )

    @Option(help: ArgumentHelp("Where to write the private key.", valueName: "file"))
    var `private`: String

    @Option(help: ArgumentHelp("Where to write the public key.", valueName: "file"))
    var `public`: String

    func run() throws {
        let key = AuditSigningKey.generate()
        try Self.create(`private`, key.fileText, mode: 0o600)
        try Self.create(`public`, key.verifyingKey.fileText, mode: 0o644)
        print("key \(key.verifyingKey.keyID): private \(`private`), public \(`public`)")
    }

    /// A new file with `mode` from the start (never a moment with wider permissions).
    static func create(_ path: String, _ text: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard descriptor >= 0 else {
            throw FailedStart(message: "\(path): cannot create: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        guard write(descriptor, bytes, bytes.count) == bytes.count else {
            throw FailedStart(message: "\(path): cannot write: \(String(cString: strerror(errno)))")
        }
    }
}

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
