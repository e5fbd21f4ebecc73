struct ParseError: Error {
    var column: Int
    var message: String
}

/// The tokens of one line, read left to right.
struct Cursor {
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
