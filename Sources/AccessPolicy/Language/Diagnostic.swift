/// An error or warning about a policy file, located to the character.
public struct Diagnostic: Hashable, Sendable, CustomStringConvertible {
    public enum Severity: String, Hashable, Sendable {
        case error, warning
    }

    public var severity: Severity
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String
    /// The source line, shown under the message with a caret at the column.
    public var lineText: String

    public init(_ severity: Severity, file: String, line: Int, column: Int, message: String, lineText: String) {
        self.severity = severity
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        self.lineText = lineText
    }

    /// `file:line:col: error: message`, the line, and a caret under the column, as
    /// compilers print them.
    public var description: String {
        let caret = String(repeating: " ", count: max(0, column - 1)) + "^"
        return "\(file):\(line):\(column): \(severity.rawValue): \(message)\n    \(lineText)\n    \(caret)"
    }
}

/// One lexical token of a policy line.
struct Token: Hashable, Sendable {
    enum Kind: Hashable, Sendable {
        case word(String)
        case string(String)
        case comma
        case equals
    }

    var kind: Kind
    /// 1-based, in characters.
    var column: Int

    var word: String? {
        if case .word(let text) = kind { text } else { nil }
    }

    var text: String {
        switch kind {
        case .word(let text): text
        case .string(let text): "\"\(text)\""
        case .comma: ","
        case .equals: "="
        }
    }
}

enum Lexer {
    struct Failure: Error {
        var column: Int
        var message: String
    }

    /// The tokens of one line; `#` starts a comment outside a string.
    static func tokens(of line: String) throws(Failure) -> [Token] {
        var tokens: [Token] = []
        let characters = Array(line)
        var index = 0
        while index < characters.count {
            let character = characters[index]
            let column = index + 1
            switch character {
            case "#":
                return tokens
            case " ", "\t", "\r":
                index += 1
            case ",":
                tokens.append(Token(kind: .comma, column: column))
                index += 1
            case "=":
                tokens.append(Token(kind: .equals, column: column))
                index += 1
            case "\"":
                guard let close = characters[(index + 1)...].firstIndex(of: "\"") else {
                    throw Failure(column: column, message: "unterminated string: add the closing '\"'")
                }
                tokens.append(Token(kind: .string(String(characters[(index + 1)..<close])), column: column))
                index = close + 1
            default:
                var end = index
                while end < characters.count, !" \t\r,=#\"".contains(characters[end]) { end += 1 }
                tokens.append(Token(kind: .word(String(characters[index..<end])), column: column))
                index = end
            }
        }
        return tokens
    }
}
