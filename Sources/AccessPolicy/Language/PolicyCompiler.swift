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

private struct ParseError: Error {
    var column: Int
    var message: String
}

/// The tokens of one line, read left to right.
private struct Cursor {
    let tokens: [Token]
    var index = 0
    /// The column just past the line's last token, for "expected … at end of line".
    let endColumn: Int

    var atEnd: Bool { index >= tokens.count }
    var peek: Token? { atEnd ? nil : tokens[index] }
    var column: Int { peek?.column ?? endColumn }

    mutating func next() -> Token? {
        defer { index += 1 }
        return peek
    }

    mutating func word(_ what: String) throws(ParseError) -> (text: String, column: Int) {
        guard let token = peek else { throw ParseError(column: column, message: "expected \(what) at the end of the line") }
        guard let text = token.word else {
            throw ParseError(column: token.column, message: "expected \(what), found '\(token.text)'")
        }
        index += 1
        return (text, token.column)
    }

    mutating func skipComma() -> Bool {
        if peek?.kind == .comma {
            index += 1
            return true
        }
        return false
    }
}

private enum SetKind: String {
    case net, ports, users, hosts
}

private struct NamedSet {
    var kind: SetKind
    var line: Int
    var column: Int
    var lineText: String
    var file: String
    var used = false
    /// Its line had an error: uses of it are not reported again.
    var broken = false
    var networks: [IPNetwork] = []
    var ports: [ClosedRange<UInt16>] = []
    var users: [String] = []
    var destinations: [DestinationPattern] = []
}

private struct Parser {
    var file: String
    var diagnostics: [Diagnostic] = []
    var rules: [RuleSource] = []
    var limits: [LimitSource] = []
    var readSecret: PolicyCompiler.SecretReader?
    var identScopes: [IdentScope] = []
    var minimumProtection = MessageProtection.none
    var localRealms: Set<String> = []
    private var protectionLine: Int?
    var utcOffsetSeconds = 0
    var expectations: [Expectation] = []
    private var sets: [String: NamedSet] = [:]
    private var setOrder: [String] = []
    private var timezoneLine: Int?
    private var lineNumber = 0
    private var lineText = ""

    init(file: String) {
        self.file = file
    }

    static let ruleKeywords = ["from", "to", "port", "user", "ident", "version", "auth", "time", "via", "label"]

    mutating func parse(_ text: String, expectationsOnly: Bool = false) {
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            lineNumber = index + 1
            lineText = String(line.hasSuffix("\r") ? line.dropLast() : line)
            let tokens: [Token]
            do throws(Lexer.Failure) {
                tokens = try Lexer.tokens(of: lineText)
            } catch {
                report(.error, column: error.column, error.message)
                continue
            }
            guard let first = tokens.first else { continue }
            var cursor = Cursor(tokens: tokens, endColumn: lineText.count + 1)
            do throws(ParseError) {
                guard let keyword = first.word else {
                    throw ParseError(column: first.column, message: "a line starts with a keyword, not '\(first.text)'")
                }
                if expectationsOnly, keyword != "expect" {
                    throw ParseError(column: first.column, message: "a tests file holds only 'expect' lines")
                }
                _ = cursor.next()
                switch keyword {
                case "allow", "deny": try parseRule(keyword == "allow" ? .allow : .deny, &cursor)
                case "net", "ports", "users", "hosts": try parseSet(SetKind(rawValue: keyword) ?? .net, &cursor)
                case "ident": try parseIdentScope(&cursor)
                case "timezone": try parseTimeZone(&cursor, column: first.column)
                case "expect": try parseExpectation(&cursor)
                case "limit": try parseLimit(&cursor)
                case "gssapi": try parseGSSAPI(&cursor)
                default:
                    throw ParseError(
                        column: first.column,
                        message:
                            "unknown keyword '\(keyword)'; a line is a rule (allow, deny), a set (net, ports, users, hosts), "
                            + "limit, gssapi, ident, timezone or expect")
                }
                if let extra = cursor.peek {
                    throw ParseError(column: extra.column, message: "unexpected '\(extra.text)' at the end of the line")
                }
            } catch {
                if error.message != Self.alreadyReported { report(.error, column: error.column, error.message) }
            }
        }
    }

    /// Thrown where a broken set is used: its own line already has the error.
    static let alreadyReported = "(reported where the set is defined)"

    private mutating func report(_ severity: Diagnostic.Severity, column: Int, _ message: String) {
        diagnostics.append(
            Diagnostic(severity, file: file, line: lineNumber, column: column, message: message, lineText: lineText))
    }

    mutating func warnAboutUnusedSets() {
        for name in setOrder {
            guard let set = sets[name], !set.used else { continue }
            diagnostics.append(
                Diagnostic(
                    .warning, file: set.file, line: set.line, column: set.column,
                    message: "set '\(name)' is never used", lineText: set.lineText))
        }
    }

    // MARK: Sets

    private mutating func parseSet(_ kind: SetKind, _ cursor: inout Cursor) throws(ParseError) {
        let (name, column) = try cursor.word("a set name")
        guard name.first?.isLetter == true, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
            throw ParseError(column: column, message: "a set name is letters, digits, '_' and '-', starting with a letter")
        }
        guard !["any"].contains(name) else { throw ParseError(column: column, message: "'any' is a keyword, not a set name") }
        if let earlier = sets[name] {
            throw ParseError(column: column, message: "set '\(name)' is already defined on line \(earlier.line)")
        }
        guard cursor.peek?.kind == .equals else {
            throw ParseError(column: cursor.column, message: "expected '=' after the set name")
        }
        _ = cursor.next()
        var set = NamedSet(kind: kind, line: lineNumber, column: column, lineText: lineText, file: file)
        defer {
            sets[name] = set
            setOrder.append(name)
        }
        set.broken = true
        repeat {
            switch kind {
            case .net:
                guard let networks = try networkItem(&cursor, allowAny: false) else { break }
                set.networks += networks
            case .hosts:
                guard let patterns = try destinationItem(&cursor, allowAny: false) else { break }
                set.destinations += patterns
            case .ports:
                guard let ports = try portItem(&cursor, allowAny: false) else { break }
                set.ports += ports
            case .users:
                set.users += try userItem(&cursor)
            }
        } while cursor.skipComma()
        set.broken = false
    }

    /// `@name` of one of `kinds`, marked used.
    private mutating func reference(_ word: String, column: Int, kinds: [SetKind]) throws(ParseError) -> NamedSet {
        let name = String(word.dropFirst())
        guard var set = sets[name] else {
            throw ParseError(column: column, message: "unknown set '@\(name)'; define it above this line")
        }
        guard kinds.contains(set.kind) else {
            let wanted = kinds.map(\.rawValue).joined(separator: " or ")
            throw ParseError(column: column, message: "'@\(name)' is a \(set.kind.rawValue) set; here a \(wanted) set is needed")
        }
        set.used = true
        sets[name] = set
        if set.broken { throw ParseError(column: column, message: Parser.alreadyReported) }
        return set
    }

    // MARK: Items

    /// A network, `@net`, or `any` (nil).
    private mutating func networkItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [IPNetwork]? {
        let (text, column) = try cursor.word("an address, a network or @set")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") { return try reference(text, column: column, kinds: [.net]).networks }
        return [try network(text, column: column)]
    }

    private mutating func network(_ text: String, column: Int) throws(ParseError) -> IPNetwork {
        guard let network = IPNetwork(text) else {
            if sets[text] != nil { throw ParseError(column: column, message: "'\(text)' is a set: write @\(text)") }
            throw ParseError(
                column: column, message: "'\(text)' is not an address or network (like 10.0.0.0/8, fd00::/8, 192.0.2.1)")
        }
        if let slash = text.firstIndex(of: "/"), IPAddress(String(text[..<slash])) != network.address {
            report(.warning, column: column, "'\(text)' has host bits set; it means \(network)")
        }
        return network
    }

    private mutating func destinationItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [DestinationPattern]? {
        let (text, column) = try cursor.word("a destination (network, host name, .domain, @set or any)")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") {
            let set = try reference(text, column: column, kinds: [.net, .hosts])
            return set.kind == .net ? set.networks.map(DestinationPattern.network) : set.destinations
        }
        if text.first?.isNumber == true || text.contains(":") {
            if IPNetwork(text) != nil { return [.network(try network(text, column: column))] }
        }
        let suffix = text.hasPrefix(".")
        let name = HostName.normalized(suffix ? String(text.dropFirst()) : text)
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty,
            labels.allSatisfy({
                !$0.isEmpty && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
            })
        else {
            throw ParseError(column: column, message: "'\(text)' is not a network, host name or .domain")
        }
        return [suffix ? .domainSuffix(name) : .hostName(name)]
    }

    private mutating func portItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [ClosedRange<UInt16>]? {
        let (text, column) = try cursor.word("a port, a range, a service name or @set")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") { return try reference(text, column: column, kinds: [.ports]).ports }
        if let port = ServiceNames.port(text) { return [port...port] }
        let bounds = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) }), let low = UInt16(bounds[0]),
            let high = bounds.count == 2 ? UInt16(bounds[1]) : low
        else {
            throw ParseError(
                column: column, message: "'\(text)' is not a port (0-65535), a range like 8000-8999, or a known service name")
        }
        guard low <= high else { throw ParseError(column: column, message: "the range \(text) is empty: write \(high)-\(low)") }
        return [low...high]
    }

    private mutating func userItem(_ cursor: inout Cursor) throws(ParseError) -> [String] {
        if case .string(let name)? = cursor.peek?.kind {
            _ = cursor.next()
            return [name]
        }
        let (text, column) = try cursor.word("a user name or @set")
        if text.hasPrefix("@") { return try reference(text, column: column, kinds: [.users]).users }
        return [text]
    }

    private func keyword<Value>(_ cursor: inout Cursor, _ what: String, _ values: [String: Value]) throws(ParseError) -> Value {
        let (text, column) = try cursor.word(what)
        guard let value = values[text] else {
            throw ParseError(
                column: column, message: "'\(text)' is not \(what): use \(values.keys.sorted().joined(separator: ", "))")
        }
        return value
    }

    private static let commandNames: [String: RequestFacts.Command] = ["connect": .connect, "bind": .bind, "udp": .udp]
    private static let versionNames: [String: RequestFacts.Version] = ["socks4": .socks4, "socks4a": .socks4a, "socks5": .socks5]
    private static let authNames: [String: RequestFacts.AuthMethod] = [
        "none": .none, "password": .password, "gssapi": .gssapi,
    ]

    // MARK: Rules

    private mutating func parseRule(_ verdict: Decision.Verdict, _ cursor: inout Cursor) throws(ParseError) {
        var rule = Rule(verdict, RuleReference(line: lineNumber), text: lineText.trimmedPolicyLine)
        var columns: [String: Int] = ["verdict": cursor.tokens[0].column]
        try parseCommands(&cursor, into: &rule, columns: &columns)
        try parseConditions(&cursor, into: &rule, columns: &columns, keywords: Self.ruleKeywords)
        rules.append(RuleSource(rule: rule, lineText: lineText, columns: columns))
    }

    /// `connect`, `bind`, `udp`, a comma list of them, or `any`; nothing: any command.
    private func parseCommands(_ cursor: inout Cursor, into rule: inout Rule, columns: inout [String: Int]) throws(ParseError) {
        if let word = cursor.peek?.word, Self.commandNames[word] != nil || word == "any" {
            columns["command"] = cursor.column
            if word == "any" {
                _ = cursor.next()
            } else {
                var commands: Set<RequestFacts.Command> = []
                repeat { commands.insert(try keyword(&cursor, "a command", Self.commandNames)) } while cursor.skipComma()
                rule.commands = commands
            }
        }
    }

    /// The conditions and label to the end of the line, each at most once; `keywords`
    /// are those this kind of line takes.
    private mutating func parseConditions(
        _ cursor: inout Cursor, into rule: inout Rule, columns: inout [String: Int], keywords: [String]
    ) throws(ParseError) {
        while let token = cursor.peek {
            let (clause, column) = try cursor.word("a condition")
            guard keywords.contains(clause) else {
                if Self.ruleKeywords.contains(clause) {
                    throw ParseError(
                        column: column,
                        message:
                            "'\(clause)' is not a condition of a limit: a limit counts sessions by who makes them "
                            + "(\(keywords.joined(separator: ", "))), whatever their destination")
                }
                let known = keywords + (columns["command"] == nil ? Array(Self.commandNames.keys) : [])
                let hint = known.first { Self.isTypo(clause, of: $0) }.map { " (did you mean '\($0)'?)" } ?? ""
                throw ParseError(
                    column: token.column,
                    message: "unknown condition '\(clause)'\(hint); expected \(keywords.joined(separator: ", "))")
            }
            guard columns[clause] == nil else {
                throw ParseError(column: column, message: "'\(clause)' appears twice; list all its values in one '\(clause)'")
            }
            columns[clause] = column
            switch clause {
            case "from":
                rule.sources = try Self.list(&cursor) { (cursor: inout Cursor) throws(ParseError) in
                    try networkItem(&cursor, allowAny: true)
                }
            case "to":
                rule.destinations = try Self.list(&cursor) { (cursor: inout Cursor) throws(ParseError) in
                    try destinationItem(&cursor, allowAny: true)
                }
            case "port":
                rule.ports = try Self.list(&cursor) { (cursor: inout Cursor) throws(ParseError) in
                    try portItem(&cursor, allowAny: true)
                }
            case "user":
                var users: Set<String> = []
                repeat { users.formUnion(try userItem(&cursor)) } while cursor.skipComma()
                rule.users = users
            case "ident":
                rule.requiresIdent = true
            case "version":
                var versions: Set<RequestFacts.Version> = []
                repeat { versions.insert(try keyword(&cursor, "a SOCKS version", Self.versionNames)) } while cursor.skipComma()
                rule.versions = versions
            case "auth":
                var methods: Set<RequestFacts.AuthMethod> = []
                repeat { methods.insert(try keyword(&cursor, "an auth method", Self.authNames)) } while cursor.skipComma()
                rule.authMethods = methods
            case "time":
                var windows: [WeeklyWindow] = []
                repeat { windows.append(try timeWindow(&cursor)) } while cursor.skipComma()
                rule.times = windows
            case "via":
                guard rule.verdict == .allow else {
                    throw ParseError(column: column, message: "'via' is for allow rules: a denied request goes nowhere")
                }
                var parents: [SOCKSURL] = []
                repeat {
                    let (text, urlColumn) = try cursor.word("a parent's SOCKS URL, like socks5h://gw.example:1080")
                    do {
                        var url = try SOCKSURL.parse(text)
                        if url.password != nil {
                            report(
                                .warning, column: urlColumn,
                                "the password of \(url) is written in the policy: whoever can read the policy can read it")
                        }
                        if url.writtenAsPlainSOCKS {
                            report(
                                .warning, column: urlColumn,
                                "socks:// is read as socks4:// (as curl does); write socks4://, socks5:// or socks5h:// to say which")
                        }
                        url.writtenAsPlainSOCKS = false
                        parents.append(url)
                    } catch {
                        throw ParseError(column: urlColumn + error.offset, message: "not a SOCKS URL: \(error.message)")
                    }
                } while cursor.skipComma()
                if cursor.peek?.word == "password-file" {
                    let fileColumn = cursor.column
                    _ = cursor.next()
                    let path: String
                    if case .string(let quoted)? = cursor.peek?.kind {
                        _ = cursor.next()
                        path = quoted
                    } else {
                        path = try cursor.word("the password file's path").text
                    }
                    guard let readSecret else {
                        throw ParseError(column: fileColumn, message: "password-file needs a policy read from a file")
                    }
                    switch readSecret(path) {
                    case .failure(let error):
                        throw ParseError(column: fileColumn, message: "cannot read the password file \(path): \(error.message)")
                    case .success(let password):
                        // For every parent with a user and no password of its own.
                        for index in parents.indices where parents[index].user != nil && parents[index].password == nil {
                            parents[index].password = password
                        }
                    }
                }
                rule.route = parents
            default:  // label
                guard case .string(let label)? = cursor.next()?.kind else {
                    throw ParseError(column: column + 6, message: "expected the label as a \"quoted string\" after 'label'")
                }
                rule.reference.label = label
            }
        }
    }

    static let limitKeywords = ["from", "user", "version", "auth", "label"]

    /// `limit [COMMANDS] sessions N|rate N/s|rate N/m per client|per user|total
    /// [from …] [user …] [version …] [auth …] [label "…"]`
    private mutating func parseLimit(_ cursor: inout Cursor) throws(ParseError) {
        var conditions = Rule(.allow, RuleReference(line: lineNumber))
        var columns: [String: Int] = ["verdict": cursor.tokens[0].column]
        try parseCommands(&cursor, into: &conditions, columns: &columns)
        let (kind, kindColumn) = try cursor.word("'sessions' or 'rate'")
        columns["measure"] = kindColumn
        let measure: SessionLimit.Measure
        switch kind {
        case "sessions":
            let (text, column) = try cursor.word("the most sessions open at once, like 64")
            measure = .sessions(try Self.limitCount(text, column: column))
        case "rate":
            let (text, column) = try cursor.word("new sessions per time, like 20/s or 600/m")
            let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let seconds = ["s": 1, "m": 60][String(parts[1])] else {
                throw ParseError(column: column, message: "'\(text)' is not a rate: write new sessions per second or minute, like 20/s or 600/m")
            }
            measure = .rate(count: try Self.limitCount(String(parts[0]), column: column), seconds: seconds)
        default:
            throw ParseError(
                column: kindColumn,
                message: "expected 'sessions' or 'rate' after 'limit': limit sessions 64 per client, limit rate 20/s per client")
        }
        let (scopeWord, scopeColumn) = try cursor.word("'per client', 'per user' or 'total'")
        columns["scope"] = scopeColumn
        let scope: SessionLimit.Scope
        switch scopeWord {
        case "total":
            scope = .total
        case "per":
            let (whose, column) = try cursor.word("'client' or 'user' after 'per'")
            guard let named = ["client": SessionLimit.Scope.client, "user": .user][whose] else {
                throw ParseError(column: column, message: "'per \(whose)': a limit counts per client, per user, or in total")
            }
            scope = named
        default:
            throw ParseError(column: scopeColumn, message: "expected 'per client', 'per user' or 'total', found '\(scopeWord)'")
        }
        try parseConditions(&cursor, into: &conditions, columns: &columns, keywords: Self.limitKeywords)
        limits.append(
            LimitSource(
                limit: SessionLimit(
                    measure, scope, conditions: conditions, reference: conditions.reference),
                lineText: lineText, columns: columns))
    }

    /// A limit's number: 1 to `SessionLimit.largestCount`.
    private static func limitCount(_ text: String, column: Int) throws(ParseError) -> Int {
        guard text.allSatisfy(\.isASCII), let count = Int(text), count >= 0 else {
            throw ParseError(column: column, message: "'\(text)' is not a whole number")
        }
        guard count > 0 else {
            throw ParseError(column: column, message: "a limit of 0 admits nothing: write a deny rule instead")
        }
        guard count <= SessionLimit.largestCount else {
            throw ParseError(column: column, message: "'\(text)' is more than a limit may be (at most 1000000)")
        }
        return count
    }

    /// One edit (a letter missing, extra, changed or two swapped) away.
    static func isTypo(_ word: String, of keyword: String) -> Bool {
        let a = Array(word)
        let b = Array(keyword)
        guard abs(a.count - b.count) <= 1, a != b else { return false }
        if a.count == b.count {
            let differences = a.indices.filter { a[$0] != b[$0] }
            return differences.count == 1
                || (differences.count == 2 && differences[1] == differences[0] + 1 && a[differences[0]] == b[differences[1]]
                    && a[differences[1]] == b[differences[0]])
        }
        let (short, long) = a.count < b.count ? (a, b) : (b, a)
        return long.indices.contains { index in Array(long[..<index] + long[(index + 1)...]) == short }
    }

    /// A comma list of items where `any` (an item returning nil) stands alone.
    private static func list<Item>(
        _ cursor: inout Cursor, _ item: (inout Cursor) throws(ParseError) -> [Item]?
    ) throws(ParseError) -> [Item]? {
        var items: [Item] = []
        repeat {
            let column = cursor.column
            if let values = try item(&cursor) {
                items += values
            } else {
                guard items.isEmpty, !cursor.skipComma() else {
                    throw ParseError(column: column, message: "'any' stands alone; it already includes the other values")
                }
                return nil
            }
        } while cursor.skipComma()
        return items
    }

    private static let dayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    /// `mon-fri 08:00-18:00`, `sat 09:00-13:00`, `daily 22:00-06:00`.
    private func timeWindow(_ cursor: inout Cursor) throws(ParseError) -> WeeklyWindow {
        let (daysText, daysColumn) = try cursor.word("days (mon-fri, sat, daily)")
        let days: [Int]
        if daysText == "daily" {
            days = Array(0..<7)
        } else {
            let parts = daysText.split(separator: "-", maxSplits: 1).compactMap { Self.dayNames.firstIndex(of: String($0)) }
            guard let first = parts.first, parts.count == daysText.split(separator: "-", maxSplits: 1).count else {
                throw ParseError(
                    column: daysColumn, message: "'\(daysText)' is not days: use mon … sun, a range like mon-fri, or daily")
            }
            let last = parts.last ?? first
            days = first <= last ? Array(first...last) : Array(first..<7) + Array(0...last)
        }
        let (hoursText, hoursColumn) = try cursor.word("hours like 08:00-18:00")
        let bounds = hoursText.split(separator: "-", maxSplits: 1).map { Self.minutes(String($0)) }
        guard bounds.count == 2, let start = bounds[0], let end = bounds[1], start < 1440, start != end else {
            throw ParseError(
                column: hoursColumn, message: "'\(hoursText)' is not hours: use HH:MM-HH:MM, like 08:00-18:00 or 22:00-06:00")
        }
        return WeeklyWindow(
            days: days, start: start, end: end % 1440 == 0 && end > start ? 1440 : end, description: "\(daysText) \(hoursText)")
    }

    /// `HH:MM` as minutes after midnight; `24:00` is allowed as an end.
    static func minutes(_ text: String) -> Int? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, parts[0].count == 2, parts[1].count == 2, let hours = Int(parts[0]), let minutes = Int(parts[1]),
            (0...24).contains(hours), (0..<60).contains(minutes), hours < 24 || minutes == 0
        else { return nil }
        return hours * 60 + minutes
    }

    // MARK: Directives

    /// `ident from NETWORKS [timeout DURATION]`
    private mutating func parseIdentScope(_ cursor: inout Cursor) throws(ParseError) {
        let (from, fromColumn) = try cursor.word("'from'")
        guard from == "from" else {
            throw ParseError(column: fromColumn, message: "expected 'from' after 'ident': ident from NETWORKS [timeout 5s]")
        }
        let networks = try Self.list(&cursor) { (cursor: inout Cursor) throws(ParseError) in
            try networkItem(&cursor, allowAny: true)
        }
        var timeout = 10.0
        if let word = cursor.peek?.word, word == "timeout" {
            _ = cursor.next()
            let (text, column) = try cursor.word("a duration like 5s")
            guard let seconds = Self.seconds(text), seconds.isFinite, seconds > 0 else {
                throw ParseError(column: column, message: "'\(text)' is not a duration: use 500ms, 5s or 1m")
            }
            guard seconds <= Self.longestIdentTimeout else {
                throw ParseError(column: column, message: "'\(text)' is longer than an ident lookup may take (at most 5m)")
            }
            timeout = seconds
        }
        identScopes.append(
            IdentScope(
                networks: networks ?? IPNetwork.everything, timeoutSeconds: timeout, line: lineNumber))
    }

    /// An identd that has not answered in five minutes never will; the decision deadline
    /// (`--negotiate-timeout`) must exceed this anyway.
    static let longestIdentTimeout = 300.0

    static func seconds(_ text: String) -> Double? {
        for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0)] where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).map { $0 * scale }
        }
        return nil
    }

    /// `gssapi require integrity|confidentiality|none`: the least per-message protection
    /// granted; `gssapi local-realm REALM[, REALM]`: its principals are users by their
    /// short names.
    private mutating func parseGSSAPI(_ cursor: inout Cursor) throws(ParseError) {
        let (setting, column) = try cursor.word("'require' or 'local-realm'")
        switch setting {
        case "require":
            if let earlier = protectionLine {
                throw ParseError(column: column, message: "the GSS-API protection is already required on line \(earlier)")
            }
            minimumProtection = try keyword(
                &cursor, "a protection level", ["none": .none, "integrity": .integrity, "confidentiality": .confidentiality])
            protectionLine = lineNumber
        case "local-realm":
            repeat {
                let (realm, realmColumn) = try cursor.word("a Kerberos realm like CORP.EXAMPLE")
                guard !realm.isEmpty, !realm.contains("@"), realm.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
                    throw ParseError(column: realmColumn, message: "'\(realm)' is not a realm (like CORP.EXAMPLE, without '@')")
                }
                localRealms.insert(realm)
            } while cursor.skipComma()
        default:
            throw ParseError(
                column: column,
                message: "expected 'require' or 'local-realm' after 'gssapi': gssapi require integrity, gssapi local-realm CORP.EXAMPLE")
        }
    }

    /// `timezone UTC`, `timezone UTC+01:00`, `timezone UTC-05:30`.
    private mutating func parseTimeZone(_ cursor: inout Cursor, column: Int) throws(ParseError) {
        if let earlier = timezoneLine {
            throw ParseError(column: column, message: "the time zone is already set on line \(earlier)")
        }
        let (text, textColumn) = try cursor.word("a time zone like UTC+01:00")
        guard let offset = Self.utcOffset(text) else {
            throw ParseError(
                column: textColumn,
                message: "'\(text)' is not a time zone: use UTC or a fixed offset like UTC+01:00 (no named zones)")
        }
        utcOffsetSeconds = offset
        timezoneLine = lineNumber
    }

    static func utcOffset(_ text: String) -> Int? {
        guard text.hasPrefix("UTC") else { return nil }
        let rest = text.dropFirst(3)
        if rest.isEmpty { return 0 }
        guard let sign = rest.first, sign == "+" || sign == "-", let minutes = minutes(String(rest.dropFirst())),
            minutes <= 14 * 60
        else { return nil }
        return (sign == "+" ? 1 : -1) * minutes * 60
    }

    // MARK: Expectations

    private static let expectedResults: [String: Expectation.Result] = [
        "allow": .allow, "deny": .deny, "92": .identUnreachable, "93": .identMismatch, "limit": .limitReached,
    ]

    private mutating func parseExpectation(_ cursor: inout Cursor) throws(ParseError) {
        let result = try keyword(&cursor, "an expected result", Self.expectedResults)
        let request = try RequestParser.parse(&cursor, defaultVersion: result.isSOCKS4Reply ? .socks4 : .socks5)
        if result.isSOCKS4Reply, request.facts.version == .socks5 {
            throw ParseError(
                column: cursor.tokens[1].column,
                message: "92 and 93 are SOCKS4 replies; the request needs version socks4 or socks4a")
        }
        expectations.append(
            Expectation(
                result: result, facts: request.facts, ident: request.ident, load: request.load, via: request.via, file: file,
                line: lineNumber, lineText: lineText))
    }
}

/// The request part of `expect` lines, shared in spirit with `identgate explain`:
/// `[command] from IP[:PORT] to HOST:PORT [user U] [ident U | ident-error KIND]
/// [version V] [auth A] [at TIME] [resolved IP]`.
private enum RequestParser {
    static func parse(_ cursor: inout Cursor, defaultVersion: RequestFacts.Version) throws(ParseError) -> (
        facts: RequestFacts, ident: IdentOutcome?, load: (open: Int, recent: Int), via: SOCKSURL?
    ) {
        var command = RequestFacts.Command.connect
        if let word = cursor.peek?.word, let named = ["connect": RequestFacts.Command.connect, "bind": .bind, "udp": .udp][word] {
            command = named
            _ = cursor.next()
        }
        var client: IPEndpoint?
        var destination: (RequestFacts.Destination, UInt16)?
        var user: String?
        var ident: IdentOutcome?
        var version = defaultVersion
        var auth = RequestFacts.AuthMethod.none
        var time: Int64?
        var resolved: IPAddress?
        var load = (open: 0, recent: 0)
        var via: SOCKSURL?
        while !cursor.atEnd {
            let (word, column) = try cursor.word(
                "a request part (from, to, user, ident, ident-error, version, auth, at, resolved, open, recent, via)")
            switch word {
            case "via":
                let (text, column) = try cursor.word("the parent's SOCKS URL the request goes through")
                do {
                    via = try SOCKSURL.parse(text)
                } catch {
                    throw ParseError(column: column + error.offset, message: "not a SOCKS URL: \(error.message)")
                }
            case "open", "recent":
                let (text, column) = try cursor.word("a number of sessions")
                guard text.allSatisfy(\.isASCII), let count = Int(text), (0...SessionLimit.largestCount).contains(count) else {
                    throw ParseError(column: column, message: "'\(text)' is not a number of sessions (0 to 1000000)")
                }
                if word == "open" { load.open = count } else { load.recent = count }
            case "from":
                let (text, column) = try cursor.word("the client address")
                guard let endpoint = RequestText.client(text) else {
                    throw ParseError(column: column, message: "'\(text)' is not a client address like 10.1.2.3 or 10.1.2.3:40000")
                }
                client = endpoint
            case "to":
                let (text, column) = try cursor.word("the destination HOST:PORT")
                guard let parsed = RequestText.destination(text) else {
                    throw ParseError(
                        column: column, message: "'\(text)' is not HOST:PORT (example.com:443, 192.0.2.1:80, [2001:db8::1]:443)")
                }
                destination = parsed
            case "user":
                if case .string(let name)? = cursor.peek?.kind {
                    _ = cursor.next()
                    user = name
                } else {
                    user = try cursor.word("a user name").text
                }
            case "ident":
                ident = .userID(try cursor.word("the user-id identd answers").text)
            case "ident-error":
                let (text, column) = try cursor.word("an ident failure")
                guard let failure = IdentFailure(rawValue: text) else {
                    throw ParseError(
                        column: column,
                        message:
                            "'\(text)' is not an ident failure: use \(IdentFailure.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                ident = .failure(failure)
            case "version":
                let (text, column) = try cursor.word("a SOCKS version")
                guard let named = RequestFacts.Version(rawValue: text) else {
                    throw ParseError(column: column, message: "'\(text)' is not a SOCKS version: use socks4, socks4a, socks5")
                }
                version = named
            case "auth":
                let (text, column) = try cursor.word("an auth method")
                guard let named = RequestFacts.AuthMethod(rawValue: text) else {
                    throw ParseError(column: column, message: "'\(text)' is not an auth method: use none, password, gssapi")
                }
                auth = named
            case "at":
                let (text, column) = try cursor.word("a time like 2026-11-30T09:00 or mon 09:00")
                if let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].firstIndex(of: text) {
                    let (clock, clockColumn) = try cursor.word("a time of day like 09:00")
                    guard let minutes = Parser.minutes(clock), minutes < 1440 else {
                        throw ParseError(column: clockColumn, message: "'\(clock)' is not a time of day like 09:00")
                    }
                    time = RequestText.time(weekday: day, minutes: minutes)
                } else {
                    guard let when = RequestText.time(iso: text) else {
                        throw ParseError(column: column, message: "'\(text)' is not a time like 2026-11-30T09:00 or mon 09:00")
                    }
                    time = when
                }
            case "resolved":
                let (text, column) = try cursor.word("the resolved address")
                guard let address = IPAddress(text) else {
                    throw ParseError(column: column, message: "'\(text)' is not an IP address")
                }
                resolved = address
            default:
                throw ParseError(column: column, message: "unknown request part '\(word)'")
            }
        }
        guard let client else { throw ParseError(column: cursor.endColumn, message: "the request needs 'from CLIENT'") }
        guard let (target, port) = destination else {
            throw ParseError(column: cursor.endColumn, message: "the request needs 'to HOST:PORT'")
        }
        if case .address = target, resolved != nil {
            throw ParseError(column: cursor.endColumn, message: "'resolved' is only for host-name destinations")
        }
        let facts = RequestFacts(
            version: version, command: command, client: client,
            listener: IPEndpoint(address: client.address.isIPv6 ? .v6(.loopback) : .v4(.loopback), port: 1080),
            destination: target, destinationPort: port, resolvedAddress: resolved, claimedUser: user, authMethod: auth, time: time
        )
        return (facts, ident, load, via)
    }
}

/// Text forms of request facts, for `expect` lines and `identgate explain`.
public enum RequestText {
    /// `10.1.2.3`, `10.1.2.3:40000`, `::1`, `[::1]:40000`; the port defaults to 40000.
    public static func client(_ text: String) -> IPEndpoint? {
        if let endpoint = IPEndpoint(text) { return endpoint }
        return IPAddress(text).map { IPEndpoint(address: $0, port: 40000) }
    }

    /// `HOST:PORT` with an address or a host name; IPv6 in brackets.
    public static func destination(_ text: String) -> (RequestFacts.Destination, UInt16)? {
        if let endpoint = IPEndpoint(text) { return (.address(endpoint.address), endpoint.port) }
        guard let colon = text.lastIndex(of: ":"), !text.hasPrefix("["), let port = UInt16(text[text.index(after: colon)...])
        else {
            return nil
        }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":"), IPAddress(host) == nil,
            host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_") })
        else { return nil }
        return (.hostName(host), port)
    }

    /// `YYYY-MM-DDTHH:MM` as local time in the policy's zone, returned as the Unix time
    /// it would be at UTC; the engine adds the zone's offset back, so the pair is exact.
    public static func time(iso text: String) -> Int64? {
        let parts = text.split(separator: "T")
        guard parts.count == 2 else { return nil }
        let date = parts[0].split(separator: "-").compactMap { Int($0) }
        guard date.count == 3, (1...12).contains(date[1]), (1...31).contains(date[2]),
            let minutes = Parser.minutes(String(parts[1])), minutes < 1440
        else { return nil }
        return (daysFromCivil(year: date[0], month: date[1], day: date[2]) * 1440 + Int64(minutes)) * 60
    }

    /// A time in the week of Monday 2024-01-01, as `time(iso:)` counts it.
    static func time(weekday: Int, minutes: Int) -> Int64 {
        (daysFromCivil(year: 2024, month: 1, day: 1 + weekday) * 1440 + Int64(minutes)) * 60
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let m = Int64(month)
        let dayOfYear = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146097 + dayOfEra - 719468
    }
}

extension String {
    /// The line without its comment and surrounding spaces, for `explain`.
    var trimmedPolicyLine: String {
        var end = endIndex
        var inString = false
        for index in indices {
            if self[index] == "\"" { inString.toggle() }
            if self[index] == "#", !inString {
                end = index
                break
            }
        }
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        let text = self[..<end]
        guard let first = text.firstIndex(where: { !isSpace($0) }), let last = text.lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(text[first...last])
    }
}
