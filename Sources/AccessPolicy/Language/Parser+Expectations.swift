import NetAddress
import ProxyURL

/// `expect` lines: a request and what the policy must decide for it.
extension Parser {
    static let expectedResults: [String: Expectation.Result] = [
        "allow": .allow, "deny": .deny, "92": .identUnreachable, "93": .identMismatch, "limit": .limitReached,
    ]

    mutating func parseExpectation(_ cursor: inout Cursor) throws(ParseError) {
        let result = try keyword(&cursor, "an expected result", Self.expectedResults)
        let request = try RequestParser.parse(&cursor, defaultVersion: result.isSOCKS4Reply ? .socks4 : .socks5)
        if result.isSOCKS4Reply, request.facts.version == .socks5 {
            throw ParseError(
                column: cursor.tokens[1].column,
                message: "92 and 93 are SOCKS4 replies; the request needs version socks4 or socks4a")
        }
        var expectation = Expectation(
            result: result, facts: request.facts, ident: request.ident, load: request.load, via: request.via, file: file,
            line: lineNumber, lineText: lineText)
        expectation.groups = request.groups
        expectations.append(expectation)
    }
}
