/// A Dante `sockd.conf` read into settings and rule blocks, with their lines: what
/// `identgate import dante` translates. Only the syntax is read here; what it means is
/// `DanteTranslator`'s.
public struct DanteConfig: Sendable {
    /// `key: values…`, at the top or inside a block.
    public struct Setting: Sendable {
        public var key: String
        public var values: [String]
        public var line: Int
    }

    /// `client pass { … }`, `socks block { … }`, `route { … }`.
    public struct Block: Sendable {
        public enum Kind: String, Sendable {
            case client, socks, route
        }

        public var kind: Kind
        /// `pass` or `block`; nil for a route.
        public var passes: Bool?
        public var line: Int
        public var settings: [Setting]

        public func values(_ key: String) -> [String]? {
            settings.last { $0.key == key }?.values
        }
    }

    public struct SyntaxError: Error, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "line \(line): \(message)" }
    }

    public var settings: [Setting] = []
    public var blocks: [Block] = []

    public init(parsing text: String) throws(SyntaxError) {
        var tokens: [(text: String, line: Int)] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let code = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            var word = ""
            func flush() {
                if !word.isEmpty { tokens.append((word, index + 1)) }
                word = ""
            }
            for character in code {
                switch character {
                case " ", "\t", "\r":
                    flush()
                case "{", "}", "=":
                    flush()
                    tokens.append((String(character), index + 1))
                default:
                    word.append(character)
                }
            }
            flush()
        }
        var position = 0
        var current: Block?
        var currentSetting: Setting?
        func closeSetting() {
            guard let setting = currentSetting else { return }
            if current != nil { current?.settings.append(setting) } else { settings.append(setting) }
            currentSetting = nil
        }
        while position < tokens.count {
            let (token, line) = tokens[position]
            position += 1
            if Self.isKey(token) {
                closeSetting()
                currentSetting = Setting(key: String(token.dropLast()), values: [], line: line)
                continue
            }
            switch token {
            case "{":
                throw SyntaxError(line: line, message: "'{' without 'client pass', 'socks block' or 'route' before it")
            case "}":
                closeSetting()
                guard let block = current else { throw SyntaxError(line: line, message: "'}' without a block to close") }
                blocks.append(block)
                current = nil
            case _ where ["client", "socks", "route"].contains(token) && position < tokens.count
                && ["pass", "block", "{"].contains(tokens[position].text):
                // A block header: `client pass {`, `socks block {`, `route {`.
                closeSetting()
                guard current == nil else { throw SyntaxError(line: line, message: "a block inside a block (is a '}' missing?)") }
                let kind = DanteConfig.Block.Kind(rawValue: token) ?? .socks
                var passes: Bool?
                if kind != .route {
                    guard position < tokens.count, ["pass", "block"].contains(tokens[position].text) else {
                        throw SyntaxError(line: line, message: "'\(token)' must be followed by 'pass' or 'block'")
                    }
                    passes = tokens[position].text == "pass"
                    position += 1
                }
                guard position < tokens.count, tokens[position].text == "{" else {
                    throw SyntaxError(line: line, message: "expected '{' after '\(token)\(passes.map { $0 ? " pass" : " block" } ?? "")'")
                }
                position += 1
                current = Block(kind: kind, passes: passes, line: line, settings: [])
            default:
                guard currentSetting != nil else {
                    throw SyntaxError(line: line, message: "'\(token)' is not a setting ('key: value') nor a rule block")
                }
                currentSetting?.values.append(token)
            }
        }
        closeSetting()
        if let block = current { throw SyntaxError(line: block.line, message: "the block is never closed with '}'") }
    }

    /// `from:`, `session.max:`, `user.privileged:`: a word of letters, digits, dots and
    /// dashes ending with ':' (an IPv6 address such as `fe80::` has colons inside too).
    static func isKey(_ token: String) -> Bool {
        guard token.count > 1, token.hasSuffix(":"), let first = token.first, first.isLetter else { return false }
        return token.dropLast().allSatisfy { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" }
    }
}
