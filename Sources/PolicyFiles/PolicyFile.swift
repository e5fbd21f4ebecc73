import AccessPolicy
import Crypto
import Foundation

/// A policy file as read from disk: its compilation (with `FILE.tests` beside it) and the
/// SHA-256 of exactly the bytes that were compiled, which every decision records. What
/// `run`, SIGHUP reload, `check`, `test`, `explain` and `audit replay` share.
public struct PolicyFile: Sendable {
    public var path: String
    public var compilation: PolicyCompilation
    /// SHA-256 of the policy's text as compiled, lowercase hex.
    public var sha256: String

    /// Reads and compiles `path` (and `path.tests`, if it exists).
    public static func read(_ path: String) throws -> PolicyFile {
        let text = try TextFile.read(path)
        let testsPath = path + ".tests"
        let tests = TextFile.exists(testsPath) ? (text: try TextFile.read(testsPath), file: testsPath) : nil
        return PolicyFile(
            path: path, compilation: PolicyCompiler.compile(text, file: path, tests: tests, readSecret: Self.readSecret),
            sha256: Self.sha256(of: text))
    }

    /// A parent's password file (`via … password-file FILE`): its first line. Read at
    /// start, as root, and again at each reload, as the unprivileged user: the file must
    /// be readable by it then, or the reload is refused and says so.
    static let readSecret: PolicyCompiler.SecretReader = { path in
        do {
            let text = try TextFile.read(path)
            let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let password = line.hasSuffix("\r") ? String(line.dropLast()) : line
            guard !password.isEmpty else { return .failure(.init("its first line is empty")) }
            return .success(password)
        } catch {
            return .failure(.init("\(error)"))
        }
    }

    /// The embedded default policy, as if read from its file.
    public static var embeddedDefault: PolicyFile {
        PolicyFile(
            path: DefaultPolicy.fileName, compilation: PolicyCompilation(policy: DefaultPolicy.policy, diagnostics: []),
            sha256: sha256(of: DefaultPolicy.text))
    }

    /// SHA-256 of the text's UTF-8 bytes in lowercase hex, as the audit records carry it.
    public static func sha256(of text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 0x10 ? "0" + hex : hex
        }.joined()
    }
}

/// A policy file whose expectations have run, with the engine they ran on (the one the
/// gateway then serves with: built once per load).
public struct TestedPolicy: Sendable {
    public var file: PolicyFile
    /// nil when the policy did not compile.
    public var engine: PolicyEngine?
    /// nil when the policy did not compile.
    public var report: ExpectationReport?

    /// Compiled without errors and every expectation met.
    public var isUsable: Bool { engine != nil && (report?.failures.isEmpty ?? false) }

    public static func load(_ file: PolicyFile) async -> TestedPolicy {
        guard let policy = file.compilation.policy else { return TestedPolicy(file: file, engine: nil, report: nil) }
        let engine = PolicyEngine(policy: policy)
        return TestedPolicy(file: file, engine: engine, report: await ExpectationReport.run(policy, engine: engine))
    }
}
