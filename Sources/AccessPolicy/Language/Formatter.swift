/// `identgate fmt`: one layout for every policy, as the README's examples are written.
/// Tokens are rewritten with one space between them and `a, b` lists; verdicts and
/// `expect` results are padded to one width (`deny  to …`); a rule's or limit's `label`
/// goes last, in one column for each group of lines between blank lines; comments, their
/// places and single blank lines stay; lines and their order stay. Formatting a formatted
/// text changes nothing, and the policy decides every request as before (tested with
/// `identgate diff`).
public enum PolicyFormatter {
    /// The formatted text of a policy that lexes (a line that does not is kept as it is).
    public static func format(_ text: String) -> String {
        var lines: [Line] = []
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lines.append(Line(String(raw)))
        }
        // Blank lines: at most one in a row, none at the start or the end.
        var kept: [Line] = []
        for line in lines {
            if line.isBlank, kept.last?.isBlank ?? true { continue }
            kept.append(line)
        }
        while kept.last?.isBlank == true { kept.removeLast() }
        // Labels in one column per group of lines between blank lines.
        var output: [String] = []
        var group: [Line] = []
        func flush() {
            // A line much longer than the others keeps its label one space after it,
            // rather than push every label of its group out to it.
            let width = group.compactMap { $0.label == nil || $0.body.count > longestAligned ? nil : $0.body.count }.max() ?? 0
            let keywordWidth = group.compactMap { $0.set?.keyword.count }.max() ?? 0
            let nameWidth = group.compactMap { $0.set?.name.count }.max() ?? 0
            output += group.map { $0.text(labelColumn: width, setColumns: (keywordWidth, nameWidth)) }
            group = []
        }
        for line in kept {
            if line.isBlank {
                flush()
                output.append("")
            } else {
                group.append(line)
            }
        }
        flush()
        return output.isEmpty ? "" : output.joined(separator: "\n") + "\n"
    }

    /// Rules longer than this are left out of their group's label column.
    static let longestAligned = 60

    /// One line: its code, rewritten, and its comment as written.
    private struct Line {
        var body: String
        var label: String?
        /// A set: `net inside = …`, aligned on `=` with its group's sets.
        var set: (keyword: String, name: String, items: String)?
        var comment: String?
        /// A line the lexer refused, kept as written.
        var verbatim: String?

        var isBlank: Bool { verbatim == nil && body.isEmpty && comment == nil }

        init(_ raw: String) {
            let (code, comment) = Self.split(raw)
            self.comment = comment
            body = ""
            guard let tokens = try? Lexer.tokens(of: code) else {
                verbatim = raw.trimmingTrailingSpaces
                return
            }
            var words = tokens
            if let first = words.first?.word, first == "allow" || first == "deny" || first == "limit",
                let at = words.firstIndex(where: { $0.word == "label" }), at + 1 < words.count,
                case .string = words[at + 1].kind
            {
                label = "label " + words[at + 1].text
                words.removeSubrange(at...(at + 1))
            }
            body = Self.joined(words)
            if words.count > 3, let keyword = words[0].word, ["net", "ports", "users", "groups", "hosts"].contains(keyword),
                let name = words[1].word, words[2].kind == .equals
            {
                set = (keyword, name, Self.joined(Array(words[3...])))
            }
        }

        func text(labelColumn: Int, setColumns: (keyword: Int, name: Int)) -> String {
            if let verbatim { return verbatim }
            var text = body
            if let set {
                text = set.keyword.padded(to: setColumns.keyword) + " " + set.name.padded(to: setColumns.name) + " = " + set.items
            }
            if let label {
                text += String(repeating: " ", count: body.count > PolicyFormatter.longestAligned ? 1 : max(1, labelColumn - body.count + 1)) + label
            }
            if let comment { text += text.isEmpty ? comment : "  " + comment }
            return text
        }

        /// The code and the comment (`#` outside a string, to the end of the line).
        static func split(_ raw: String) -> (code: String, comment: String?) {
            var inString = false
            for index in raw.indices {
                let character = raw[index]
                if character == "\"" { inString.toggle() }
                if character == "#", !inString {
                    return (String(raw[..<index]), String(raw[index...]).trimmingTrailingSpaces)
                }
            }
            return (raw, nil)
        }

        /// Tokens with single spaces, commas after their item (`a, b`), `=` spaced, and
        /// the first words of rules and tests padded to one width.
        static func joined(_ tokens: [Token]) -> String {
            var text = ""
            for (index, token) in tokens.enumerated() {
                if token.kind == .comma {
                    text += ","
                    continue
                }
                if !text.isEmpty { text += " " }
                var word = token.text
                let padded =
                    index + 1 < tokens.count
                    && ((index == 0 && (word == "allow" || word == "deny")) || (index == 1 && tokens.first?.word == "expect"))
                if padded, word.count < 5 { word += String(repeating: " ", count: 5 - word.count) }
                text += word
            }
            return text
        }
    }
}

extension String {
    fileprivate func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }

    fileprivate var trimmingTrailingSpaces: String {
        var text = self
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text.removeLast() }
        return text
    }
}
