import NetAddress
import ProxyURL

/// The directives that are not rules: `ident from`, `gssapi` and `timezone`.
extension Parser {
    /// `ident from NETWORKS [timeout DURATION]`
    mutating func parseIdentScope(_ cursor: inout Cursor) throws(ParseError) {
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
    mutating func parseGSSAPI(_ cursor: inout Cursor) throws(ParseError) {
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
    mutating func parseTimeZone(_ cursor: inout Cursor, column: Int) throws(ParseError) {
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
}
