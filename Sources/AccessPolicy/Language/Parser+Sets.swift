import NetAddress
import ProxyURL

/// `net`, `ports`, `users` and `hosts` lines: the named sets rules refer to with `@name`.
extension Parser {
    mutating func parseSet(_ kind: SetKind, _ cursor: inout Cursor) throws(ParseError) {
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
            case .groups:
                set.groups += try groupItem(&cursor)
            }
        } while cursor.skipComma()
        set.broken = false
    }

    /// `@name` of one of `kinds`, marked used.
    mutating func reference(_ word: String, column: Int, kinds: [SetKind]) throws(ParseError) -> NamedSet {
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
}
