import NetAddress
import ProxyURL

// The policy language's parser, one file per kind of statement (Parser+Sets, +Items,
// +Rules, +Directives, +Expectations); the lexer is in Diagnostic.swift, the line cursor
// in Cursor.swift, `expect`'s request in RequestParser.swift.

enum SetKind: String {
    case net, ports, users, hosts, groups
}

struct NamedSet {
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
    var groups: [String] = []
    var destinations: [DestinationPattern] = []
}

struct Parser {
    var file: String
    var diagnostics: [Diagnostic] = []
    var rules: [RuleSource] = []
    var limits: [LimitSource] = []
    var readSecret: PolicyCompiler.SecretReader?
    var identScopes: [IdentScope] = []
    var minimumProtection = MessageProtection.none
    var localRealms: Set<String> = []
    var protectionLine: Int?
    var utcOffsetSeconds = 0
    var expectations: [Expectation] = []
    var sets: [String: NamedSet] = [:]
    var setOrder: [String] = []
    var timezoneLine: Int?
    var lineNumber = 0
    var lineText = ""

    init(file: String) {
        self.file = file
    }

    static let ruleKeywords = ["from", "to", "port", "user", "group", "ident", "version", "auth", "time", "via", "label"]

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
                case "net", "ports", "users", "hosts", "groups": try parseSet(SetKind(rawValue: keyword) ?? .net, &cursor)
                case "ident": try parseIdentScope(&cursor)
                case "timezone": try parseTimeZone(&cursor, column: first.column)
                case "expect": try parseExpectation(&cursor)
                case "limit": try parseLimit(&cursor)
                case "gssapi": try parseGSSAPI(&cursor)
                default:
                    throw ParseError(
                        column: first.column,
                        message:
                            "unknown keyword '\(keyword)'; a line is a rule (allow, deny), a set (net, ports, users, groups, hosts), "
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

    mutating func report(_ severity: Diagnostic.Severity, column: Int, _ message: String) {
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
}
