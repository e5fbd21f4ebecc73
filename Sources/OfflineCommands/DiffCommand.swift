import AccessPolicy
import ArgumentParser
import CommandSupport
import Foundation
import PolicyDiff
import PrintableText

public struct DiffCommand: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Every request two policies decide differently: exact, over all possible requests.",
        discussion: """
            Splits the request space (clients, destinations and names, ports, commands, versions, auth \
            methods, users, identd's answers, groups, times) along every boundary either policy draws, \
            and prints each region whose outcome (allow or deny, the refusal, the route, the limits that \
            count it) changes, with the deciding rule on each side and an 'identgate explain' that shows \
            it. Exit status: 0 when no request changes, 1 when some do, 2 on errors: a check for policy \
            change reviews.
            """
    )

    @Argument(help: "The policy as it is.")
    var old: String

    @Argument(help: "The policy as it would be.")
    var new: String

    @Flag(help: "Print JSON, for tools.")
    var json = false

    @Option(help: ArgumentHelp("Print at most this many regions.", valueName: "n"))
    var limit: Int = 50

    public func run() async throws {
        guard limit >= 0 else { throw ValidationError("--limit: a number of regions, 0 or more") }
        let (oldPolicy, newPolicy) = (try load(old), try load(new))
        let diff: PolicyDiff
        do {
            diff = try await PolicyDiff(old: oldPolicy, new: newPolicy)
        } catch {
            print("identgate diff: \(error)")
            throw ExitCode(2)
        }
        let changed = !diff.differences.isEmpty || !diff.settingChanges.isEmpty
        if json {
            print(jsonText(diff))
        } else {
            print(text(diff))
        }
        if changed { throw ExitCode(1) }
    }

    private func load(_ file: String) throws -> Policy {
        let compilation: PolicyCompilation
        do {
            compilation = try loadCompilation(file)
        } catch {
            print("\(error)")
            throw ExitCode(2)
        }
        guard let policy = compilation.policy else {
            for error in compilation.errors { print(error) }
            throw ExitCode(2)
        }
        return policy
    }

    private func text(_ diff: PolicyDiff) -> String {
        var lines: [String] = []
        let count = diff.differences.count
        if count == 0 {
            lines.append("no request is decided differently (\(diff.regionsSettled) regions compared)")
        } else {
            lines.append(
                "\(count) region\(count == 1 ? "" : "s") of requests decided differently (\(diff.regionsSettled) regions compared):")
        }
        for (number, difference) in diff.differences.prefix(limit).enumerated() {
            let region = DisplayText.escaped(difference.regionLine)
            lines.append("\(number + 1). \(region): \(Self.side(difference.old)) → \(Self.side(difference.new))")
            lines.append("   identgate explain \(Self.shell(old)) \(difference.oldExample.map(Self.shell).joined(separator: " "))")
            lines.append("   identgate explain \(Self.shell(new)) \(difference.newExample.map(Self.shell).joined(separator: " "))")
        }
        if count > limit { lines.append("… and \(count - limit) more (--limit)") }
        for change in diff.settingChanges { lines.append("setting changed: \(DisplayText.escaped(change))") }
        return lines.joined(separator: "\n")
    }

    static func side(_ side: PolicyDiff.Side) -> String {
        let rule = side.rule.map { reference in
            "line \(reference.line ?? 0)" + (reference.label.map { " \"\(DisplayText.escaped($0))\"" } ?? "")
        }
        let outcome = side.outcome
        var words: String
        switch (outcome.verdict, outcome.refusal) {
        case (.allow, _): words = "allow"
        case (.deny, "identUnreachable"): words = "deny: identd gave no usable answer (SOCKS4 92)"
        case (.deny, "identMismatch"): words = "deny: identd names another user (SOCKS4 93)"
        case (.deny, "notChainable"): words = "deny: UDP cannot go through the route's parents"
        case (.deny, _): words = "deny"
        }
        if let route = outcome.route { words += " via \(route.joined(separator: ", "))" }
        if !outcome.limits.isEmpty { words += " [limits: \(outcome.limits.joined(separator: "; "))]" }
        return words + " (" + (rule ?? "no rule: the final deny") + ")"
    }

    /// A word as a shell reads it back: quoted when it holds anything but plain characters.
    static func shell(_ word: String) -> String {
        let plain = word.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil || "-_.:/,@+[]=".unicodeScalars.contains($0)) }
        return plain && !word.isEmpty ? word : "'" + DisplayText.escaped(word).replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    private func jsonText(_ diff: PolicyDiff) -> String {
        func side(_ side: PolicyDiff.Side) -> [String: Any] {
            var object: [String: Any] = ["verdict": side.outcome.verdict.rawValue, "limits": side.outcome.limits]
            if let refusal = side.outcome.refusal { object["refusal"] = refusal }
            if let route = side.outcome.route { object["route"] = route }
            if let rule = side.rule {
                var reference: [String: Any] = [:]
                if let line = rule.line { reference["line"] = line }
                if let label = rule.label { reference["label"] = label }
                object["rule"] = reference
            }
            return object
        }
        let differences: [[String: Any]] = diff.differences.prefix(limit).map { difference in
            [
                "where": difference.region, "old": side(difference.old), "new": side(difference.new),
                "explainOld": [old] + difference.oldExample, "explainNew": [new] + difference.newExample,
            ]
        }
        let object: [String: Any] = [
            "old": old, "new": new, "equivalent": diff.differences.isEmpty && diff.settingChanges.isEmpty,
            "regionsCompared": diff.regionsSettled, "differenceCount": diff.differences.count, "differences": differences,
            "settingChanges": diff.settingChanges,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
