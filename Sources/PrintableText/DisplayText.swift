/// Text that a client, a destination or an identd chose (a USERID, a user name, a host
/// name, an identd reply), made safe to print on a terminal or in a line-based log.
///
/// Control characters (C0, DEL, C1), the Unicode bidirectional overrides, isolates and
/// marks, and the line and paragraph separators are written as `\n`, `\r`, `\t` or `\u{1B}`: an escape sequence cannot reach a
/// reviewer's terminal, a newline cannot forge a log line, and right-to-left overrides
/// cannot reorder what is shown. Everything else, backslashes included, is left as it is,
/// so ordinary names (`CORP\alice`, `café`) print unchanged. The audit file itself is
/// JSON and escapes on its own.
public enum DisplayText {
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out.append(contentsOf: #"\n"#.unicodeScalars)
            case "\r": out.append(contentsOf: #"\r"#.unicodeScalars)
            case "\t": out.append(contentsOf: #"\t"#.unicodeScalars)
            case let control where needsEscape(control):
                out.append(contentsOf: "\\u{\(String(control.value, radix: 16, uppercase: true))}".unicodeScalars)
            default:
                out.append(scalar)
            }
        }
        return String(out)
    }

    /// `escaped` of an optional, with `absent` for nil.
    public static func escaped(_ text: String?, absent: String) -> String {
        text.map(escaped) ?? absent
    }

    static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        // LRE, RLE, PDF, LRO, RLO; LRI, RLI, FSI, PDI; LRM, RLM, ALM.
        case 0x202A...0x202E, 0x2066...0x2069, 0x200E, 0x200F, 0x061C: true
        // Line and paragraph separators: a new line to many line readers.
        case 0x2028, 0x2029: true
        default: false
        }
    }
}
