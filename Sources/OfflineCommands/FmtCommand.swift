import AccessPolicy
import ArgumentParser
import CommandSupport
import Foundation
import PolicyFiles

public struct FmtCommand: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "fmt",
        abstract: "Lay policies out one way: aligned verdicts, tests and labels; comments and order kept.",
        discussion: """
            Without --check or --write, prints the formatted policy. A file with errors is not formatted \
            (exit 2; 'identgate check' says why). Formatting never changes what a policy decides \
            ('identgate diff' finds no request decided differently).
            """
    )

    @Argument(help: "Policy files (a FILE.tests beside one is formatted too).")
    var files: [String]

    @Flag(help: "Change nothing; exit 1 with a unified diff if a file is not formatted.")
    var check = false

    @Flag(help: "Rewrite the files that are not formatted.")
    var write = false

    public func run() async throws {
        guard !(check && write) else { throw ValidationError("give --check or --write, not both") }
        var unformatted = 0
        for file in files.flatMap(Self.withTests) {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                print("\(file): cannot read: \(error.localizedDescription)")
                throw ExitCode(2)
            }
            // A policy with errors is not laid out: the lexer's and the parser's words first.
            let isTests = file.hasSuffix(".tests")
            let compilation = isTests ? nil : PolicyCompiler.compile(text, file: file)
            if let compilation, !compilation.errors.isEmpty {
                for error in compilation.errors { print(error) }
                throw ExitCode(2)
            }
            let formatted = PolicyFormatter.format(text)
            if check {
                if formatted != text {
                    unformatted += 1
                    print(UnifiedDiff.text(old: text, new: formatted, oldName: file, newName: "\(file) (formatted)"), terminator: "")
                }
            } else if write {
                guard formatted != text else { continue }
                do {
                    try Data(formatted.utf8).write(to: URL(fileURLWithPath: file), options: .atomic)
                } catch {
                    print("\(file): cannot write: \(error.localizedDescription)")
                    throw ExitCode(2)
                }
                print("formatted \(file)")
            } else {
                print(formatted, terminator: "")
            }
        }
        if unformatted > 0 { throw ExitCode(1) }
    }

    /// The file, and its FILE.tests beside it if there is one.
    private static func withTests(_ file: String) -> [String] {
        let tests = file + ".tests"
        return FileManager.default.fileExists(atPath: tests) ? [file, tests] : [file]
    }
}

/// A unified diff of two texts' lines (three lines of context), for `fmt --check`.
enum UnifiedDiff {
    static func text(old: String, new: String, oldName: String, newName: String) -> String {
        let a = old.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let b = new.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let edits = script(a, b)
        var out = "--- \(oldName)\n+++ \(newName)\n"
        // Hunks: runs of edits with up to three lines of context around them.
        var index = 0
        while index < edits.count {
            guard let start = edits[index...].firstIndex(where: { $0.kind != .same }) else { break }
            var end = start
            var last = start
            while end < edits.count {
                if edits[end].kind != .same { last = end }
                if end - last > 6 { break }
                end += 1
            }
            let from = max(0, start - 3)
            let to = min(edits.count, last + 4)
            let hunk = edits[from..<to]
            let oldStart = (hunk.first { $0.kind != .added }?.oldLine ?? 0) + 1
            let newStart = (hunk.first { $0.kind != .removed }?.newLine ?? 0) + 1
            let oldCount = hunk.filter { $0.kind != .added }.count
            let newCount = hunk.filter { $0.kind != .removed }.count
            out += "@@ -\(oldStart),\(oldCount) +\(newStart),\(newCount) @@\n"
            for edit in hunk {
                switch edit.kind {
                case .same: out += " \(a[edit.oldLine])\n"
                case .removed: out += "-\(a[edit.oldLine])\n"
                case .added: out += "+\(b[edit.newLine])\n"
                }
            }
            index = to
        }
        return out
    }

    struct Edit {
        enum Kind { case same, removed, added }
        var kind: Kind
        var oldLine: Int
        var newLine: Int
    }

    /// The edit script from the longest common subsequence; for texts too large for the
    /// table, every line removed and added.
    static func script(_ a: [String], _ b: [String]) -> [Edit] {
        guard a.count * b.count <= 4_000_000 else {
            return a.indices.map { Edit(kind: .removed, oldLine: $0, newLine: 0) }
                + b.indices.map { Edit(kind: .added, oldLine: a.count, newLine: $0) }
        }
        let width = b.count + 1
        var lengths = [Int32](repeating: 0, count: (a.count + 1) * width)
        for i in stride(from: a.count - 1, through: 0, by: -1) {
            for j in stride(from: b.count - 1, through: 0, by: -1) {
                lengths[i * width + j] =
                    a[i] == b[j] ? lengths[(i + 1) * width + j + 1] + 1 : max(lengths[(i + 1) * width + j], lengths[i * width + j + 1])
            }
        }
        var edits: [Edit] = []
        var i = 0
        var j = 0
        while i < a.count || j < b.count {
            if i < a.count, j < b.count, a[i] == b[j] {
                edits.append(Edit(kind: .same, oldLine: i, newLine: j))
                i += 1
                j += 1
            } else if j < b.count, i == a.count || lengths[i * width + j + 1] >= lengths[(i + 1) * width + j] {
                edits.append(Edit(kind: .added, oldLine: i, newLine: j))
                j += 1
            } else {
                edits.append(Edit(kind: .removed, oldLine: i, newLine: j))
                i += 1
            }
        }
        return edits
    }
}
