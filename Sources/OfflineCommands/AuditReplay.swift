import AccessPolicy
import ArgumentParser
import AuditLog
import CommandSupport
import Foundation
import NetAddress

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
            // Groups as the directory answered then (a rule the old policy never asked
            // about groups: the user is in none).
            let groups = record.groupAnswer ?? .member(of: [])
            let decision =
                try engine.decideImmediately(facts)
                ?? Self.decideWaiting(engine, facts, groups: groups) { _, _ in IdentAnswer(recorded ?? .failure(.unavailable)) }
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
    private static func decideWaiting(
        _ engine: PolicyEngine, _ facts: RequestFacts, groups: GroupAnswer, ident: @escaping IdentLookup
    ) throws -> Decision {
        let result = DecisionBox()
        try waitFor { result.decision = await engine.decide(facts, identLookup: ident, groupLookup: { _ in groups }) }
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
