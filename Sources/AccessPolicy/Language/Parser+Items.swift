import NetAddress
import ProxyURL

/// The items of a condition: networks, ports, users, destinations, each a literal, a `@set` or `any`.
extension Parser {
    /// A network, `@net`, or `any` (nil).
    mutating func networkItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [IPNetwork]? {
        let (text, column) = try cursor.word("an address, a network or @set")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") { return try reference(text, column: column, kinds: [.net]).networks }
        return [try network(text, column: column)]
    }

    mutating func network(_ text: String, column: Int) throws(ParseError) -> IPNetwork {
        guard let network = IPNetwork(text) else {
            if sets[text] != nil { throw ParseError(column: column, message: "'\(text)' is a set: write @\(text)") }
            throw ParseError(
                column: column, message: "'\(text)' is not an address or network (like 10.0.0.0/8, fd00::/8, 192.0.2.1)")
        }
        if let slash = text.firstIndex(of: "/"), IPAddress(String(text[..<slash])) != network.address {
            report(.warning, column: column, "'\(text)' has host bits set; it means \(network)")
        }
        return network
    }

    mutating func destinationItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [DestinationPattern]? {
        let (text, column) = try cursor.word("a destination (network, host name, .domain, @set or any)")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") {
            let set = try reference(text, column: column, kinds: [.net, .hosts])
            return set.kind == .net ? set.networks.map(DestinationPattern.network) : set.destinations
        }
        if text.first?.isNumber == true || text.contains(":") {
            if IPNetwork(text) != nil { return [.network(try network(text, column: column))] }
        }
        let suffix = text.hasPrefix(".")
        let name = HostName.normalized(suffix ? String(text.dropFirst()) : text)
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty,
            labels.allSatisfy({
                !$0.isEmpty && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
            })
        else {
            throw ParseError(column: column, message: "'\(text)' is not a network, host name or .domain")
        }
        return [suffix ? .domainSuffix(name) : .hostName(name)]
    }

    mutating func portItem(_ cursor: inout Cursor, allowAny: Bool) throws(ParseError) -> [ClosedRange<UInt16>]? {
        let (text, column) = try cursor.word("a port, a range, a service name or @set")
        if text == "any", allowAny { return nil }
        if text.hasPrefix("@") { return try reference(text, column: column, kinds: [.ports]).ports }
        if let port = ServiceNames.port(text) { return [port...port] }
        let bounds = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) }), let low = UInt16(bounds[0]),
            let high = bounds.count == 2 ? UInt16(bounds[1]) : low
        else {
            throw ParseError(
                column: column, message: "'\(text)' is not a port (0-65535), a range like 8000-8999, or a known service name")
        }
        guard low <= high else { throw ParseError(column: column, message: "the range \(text) is empty: write \(high)-\(low)") }
        return [low...high]
    }

    mutating func userItem(_ cursor: inout Cursor) throws(ParseError) -> [String] {
        try nameItem(&cursor, "a user name or @set", from: .users)
    }

    mutating func groupItem(_ cursor: inout Cursor) throws(ParseError) -> [String] {
        try nameItem(&cursor, "a group name or @set", from: .groups)
    }

    /// A name (`"quoted"` if it holds spaces), or the names of a `@set` of `kind`.
    private mutating func nameItem(_ cursor: inout Cursor, _ what: String, from kind: SetKind) throws(ParseError) -> [String] {
        if case .string(let name)? = cursor.peek?.kind {
            _ = cursor.next()
            return [name]
        }
        let (text, column) = try cursor.word(what)
        guard text.hasPrefix("@") else { return [text] }
        let set = try reference(text, column: column, kinds: [kind])
        return kind == .groups ? set.groups : set.users
    }

    func keyword<Value>(_ cursor: inout Cursor, _ what: String, _ values: [String: Value]) throws(ParseError) -> Value {
        let (text, column) = try cursor.word(what)
        guard let value = values[text] else {
            throw ParseError(
                column: column, message: "'\(text)' is not \(what): use \(values.keys.sorted().joined(separator: ", "))")
        }
        return value
    }

    static let commandNames: [String: RequestFacts.Command] = ["connect": .connect, "bind": .bind, "udp": .udp]
    static let versionNames: [String: RequestFacts.Version] = [
        "socks4": .socks4, "socks4a": .socks4a, "socks5": .socks5, "http": .http,
    ]
    static let authNames: [String: RequestFacts.AuthMethod] = [
        "none": .none, "password": .password, "gssapi": .gssapi,
    ]
}
