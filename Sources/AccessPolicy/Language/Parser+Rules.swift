import NetAddress
import ProxyURL

/// `allow` and `deny` rules and `limit` lines: the verdict, the command and the conditions.
extension Parser {
    mutating func parseRule(_ verdict: Decision.Verdict, _ cursor: inout Cursor) throws(ParseError) {
        var rule = Rule(verdict, RuleReference(line: lineNumber), text: lineText.trimmedPolicyLine)
        var columns: [String: Int] = ["verdict": cursor.tokens[0].column]
        try parseCommands(&cursor, into: &rule, columns: &columns)
        try parseConditions(&cursor, into: &rule, columns: &columns, keywords: Self.ruleKeywords)
        rules.append(RuleSource(rule: rule, lineText: lineText, columns: columns))
    }

    /// `connect`, `bind`, `udp`, a comma list of them, or `any`; nothing: any command.
    func parseCommands(_ cursor: inout Cursor, into rule: inout Rule, columns: inout [String: Int]) throws(ParseError) {
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
    mutating func parseConditions(
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
            case "group":
                var groups: Set<String> = []
                repeat { groups.formUnion(try groupItem(&cursor)) } while cursor.skipComma()
                rule.groups = groups
            case "ident":
                rule.requiresIdent = true
            case "version":
                var versions: Set<RequestFacts.Version> = []
                repeat { versions.insert(try keyword(&cursor, "a client protocol", Self.versionNames)) } while cursor.skipComma()
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

    static let limitKeywords = ["from", "user", "group", "version", "auth", "label"]

    /// `limit [COMMANDS] sessions N|rate N/s|rate N/m per client|per user|total
    /// [from …] [user …] [version …] [auth …] [label "…"]`
    mutating func parseLimit(_ cursor: inout Cursor) throws(ParseError) {
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
    static func limitCount(_ text: String, column: Int) throws(ParseError) -> Int {
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
    static func list<Item>(
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

    static let dayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    /// `mon-fri 08:00-18:00`, `sat 09:00-13:00`, `daily 22:00-06:00`.
    func timeWindow(_ cursor: inout Cursor) throws(ParseError) -> WeeklyWindow {
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
}
