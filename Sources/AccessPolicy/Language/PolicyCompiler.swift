import NetAddress
import ProxyURL

import NetAddress
import ProxyURL

/// The result of reading a policy file: the policy if there were no errors, and every
/// diagnostic (errors, then lint warnings) in line order.
public struct PolicyCompilation: Sendable {
    public var policy: Policy?
    public var diagnostics: [Diagnostic]

    public init(policy: Policy?, diagnostics: [Diagnostic]) {
        self.policy = policy
        self.diagnostics = diagnostics
    }

    public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [Diagnostic] { diagnostics.filter { $0.severity == .warning } }
}

/// Reads the policy language (see docs/policy-language.md): a hand-written lexer and a
/// line-by-line recursive-descent parser that reports every error with its line and
/// column and goes on to the next line, then compiles to a `Policy` and lints it.
public enum PolicyCompiler {
    /// Reads a secret file (`via … password-file FILE`): its first line, or why not.
    public typealias SecretReader = @Sendable (String) -> Result<String, SecretError>

    public struct SecretError: Error, Sendable {
        public var message: String
        public init(_ message: String) { self.message = message }
    }

    /// `tests`: a sibling `FILE.tests` with more `expect` lines, if there is one.
    /// `readSecret`: how `password-file` is read (the compiler does no I/O of its own);
    /// nil: a `password-file` is an error.
    public static func compile(
        _ text: String, file: String, tests: (text: String, file: String)? = nil, readSecret: SecretReader? = nil
    ) -> PolicyCompilation {
        var parser = Parser(file: file)
        parser.readSecret = readSecret
        parser.parse(text)
        if let tests {
            parser.file = tests.file
            parser.parse(tests.text, expectationsOnly: true)
            parser.file = file
        }
        let hasErrors = parser.diagnostics.contains { $0.severity == .error }
        // Lint only a policy that parses: after an error, the rest of its line is
        // unread and its sets would look unused.
        if !hasErrors { parser.warnAboutUnusedSets() }
        var diagnostics = parser.diagnostics
        var policy = Policy(
            rules: parser.rules.map(\.rule), identScopes: parser.identScopes,
            utcOffsetSeconds: parser.utcOffsetSeconds, expectations: parser.expectations, limits: parser.limits.map(\.limit))
        policy.minimumProtection = parser.minimumProtection
        policy.localRealms = parser.localRealms
        policy.extendUsersToLocalRealms()
        if !hasErrors {
            diagnostics += Linter(policy: policy, sources: parser.rules, limitSources: parser.limits, file: file).warnings()
        }
        diagnostics.sort { ($0.file, $0.line, $0.column) < ($1.file, $1.line, $1.column) }
        return PolicyCompilation(policy: hasErrors ? nil : policy, diagnostics: diagnostics)
    }
}

extension Policy {
    /// `gssapi local-realm R`: a user named `alice` in a rule or limit is also the
    /// principal `alice@R`, so rules shared with ident and password users need no second
    /// list. Done once here, so that matching compares names as written.
    mutating func extendUsersToLocalRealms() {
        guard !localRealms.isEmpty else { return }
        func extend(_ users: Set<String>?) -> Set<String>? {
            users.map { users in
                users.union(users.filter { !$0.contains("@") }.flatMap { name in localRealms.map { name + "@" + $0 } })
            }
        }
        for index in rules.indices { rules[index].users = extend(rules[index].users) }
        for index in limits.indices { limits[index].conditions.users = extend(limits[index].conditions.users) }
    }
}

/// Where a rule's parts stand in the file, for lint messages.
struct RuleSource {
    var rule: Rule
    var lineText: String
    /// Column of each clause keyword (`from`, `to`, `ident`, …), and of the verdict.
    var columns: [String: Int]
}

/// Where a limit's parts stand in the file, for lint messages.
struct LimitSource {
    var limit: SessionLimit
    var lineText: String
    /// Column of each condition keyword, of `limit` ("verdict"), `sessions`/`rate`
    /// ("measure") and the scope.
    var columns: [String: Int]
}
