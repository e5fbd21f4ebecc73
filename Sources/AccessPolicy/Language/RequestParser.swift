import NetAddress
import ProxyURL

/// The request part of `expect` lines, shared in spirit with `identgate explain`:
/// `[command] from IP[:PORT] to HOST:PORT [user U] [ident U | ident-error KIND]
/// [groups G[, G…] | groups-unavailable] [version V] [auth A] [at TIME] [resolved IP]`.
enum RequestParser {
    static func parse(_ cursor: inout Cursor, defaultVersion: RequestFacts.Version) throws(ParseError) -> (
        facts: RequestFacts, ident: IdentOutcome?, load: (open: Int, recent: Int), via: SOCKSURL?, groups: GroupAnswer?
    ) {
        var command = RequestFacts.Command.connect
        if let word = cursor.peek?.word, let named = ["connect": RequestFacts.Command.connect, "bind": .bind, "udp": .udp][word] {
            command = named
            _ = cursor.next()
        }
        var client: IPEndpoint?
        var destination: (RequestFacts.Destination, UInt16)?
        var user: String?
        var ident: IdentOutcome?
        var version = defaultVersion
        var auth = RequestFacts.AuthMethod.none
        var time: Int64?
        var resolved: IPAddress?
        var load = (open: 0, recent: 0)
        var via: SOCKSURL?
        var groups: GroupAnswer?
        while !cursor.atEnd {
            let (word, column) = try cursor.word(
                "a request part (from, to, user, ident, ident-error, groups, groups-unavailable, version, auth, at, resolved, open, recent, via)")
            switch word {
            case "groups":
                // The directory's answer for the verified user: these groups.
                var names: Set<String> = []
                repeat { names.insert(try cursor.word("a group name").text) } while cursor.skipComma()
                groups = .member(of: names)
            case "groups-unavailable":
                groups = .unavailable("posed by the test")
            case "via":
                let (text, column) = try cursor.word("the parent's SOCKS URL the request goes through")
                do {
                    via = try SOCKSURL.parse(text)
                } catch {
                    throw ParseError(column: column + error.offset, message: "not a SOCKS URL: \(error.message)")
                }
            case "open", "recent":
                let (text, column) = try cursor.word("a number of sessions")
                guard text.allSatisfy(\.isASCII), let count = Int(text), (0...SessionLimit.largestCount).contains(count) else {
                    throw ParseError(column: column, message: "'\(text)' is not a number of sessions (0 to 1000000)")
                }
                if word == "open" { load.open = count } else { load.recent = count }
            case "from":
                let (text, column) = try cursor.word("the client address")
                guard let endpoint = RequestText.client(text) else {
                    throw ParseError(column: column, message: "'\(text)' is not a client address like 10.1.2.3 or 10.1.2.3:40000")
                }
                client = endpoint
            case "to":
                let (text, column) = try cursor.word("the destination HOST:PORT")
                guard let parsed = RequestText.destination(text) else {
                    throw ParseError(
                        column: column, message: "'\(text)' is not HOST:PORT (example.com:443, 192.0.2.1:80, [2001:db8::1]:443)")
                }
                destination = parsed
            case "user":
                if case .string(let name)? = cursor.peek?.kind {
                    _ = cursor.next()
                    user = name
                } else {
                    user = try cursor.word("a user name").text
                }
            case "ident":
                ident = .userID(try cursor.word("the user-id identd answers").text)
            case "ident-error":
                let (text, column) = try cursor.word("an ident failure")
                guard let failure = IdentFailure(rawValue: text) else {
                    throw ParseError(
                        column: column,
                        message:
                            "'\(text)' is not an ident failure: use \(IdentFailure.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                ident = .failure(failure)
            case "version":
                let (text, column) = try cursor.word("a client protocol")
                guard let named = RequestFacts.Version(rawValue: text) else {
                    throw ParseError(column: column, message: "'\(text)' is not a client protocol: use socks4, socks4a, socks5, http")
                }
                version = named
            case "auth":
                let (text, column) = try cursor.word("an auth method")
                guard let named = RequestFacts.AuthMethod(rawValue: text) else {
                    throw ParseError(column: column, message: "'\(text)' is not an auth method: use none, password, gssapi")
                }
                auth = named
            case "at":
                let (text, column) = try cursor.word("a time like 2026-11-30T09:00 or mon 09:00")
                if let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].firstIndex(of: text) {
                    let (clock, clockColumn) = try cursor.word("a time of day like 09:00")
                    guard let minutes = Parser.minutes(clock), minutes < 1440 else {
                        throw ParseError(column: clockColumn, message: "'\(clock)' is not a time of day like 09:00")
                    }
                    time = RequestText.time(weekday: day, minutes: minutes)
                } else {
                    guard let when = RequestText.time(iso: text) else {
                        throw ParseError(column: column, message: "'\(text)' is not a time like 2026-11-30T09:00 or mon 09:00")
                    }
                    time = when
                }
            case "resolved":
                let (text, column) = try cursor.word("the resolved address")
                guard let address = IPAddress(text) else {
                    throw ParseError(column: column, message: "'\(text)' is not an IP address")
                }
                resolved = address
            default:
                throw ParseError(column: column, message: "unknown request part '\(word)'")
            }
        }
        guard let client else { throw ParseError(column: cursor.endColumn, message: "the request needs 'from CLIENT'") }
        guard let (target, port) = destination else {
            throw ParseError(column: cursor.endColumn, message: "the request needs 'to HOST:PORT'")
        }
        if case .address = target, resolved != nil {
            throw ParseError(column: cursor.endColumn, message: "'resolved' is only for host-name destinations")
        }
        let facts = RequestFacts(
            version: version, command: command, client: client,
            listener: IPEndpoint(address: client.address.isIPv6 ? .v6(.loopback) : .v4(.loopback), port: 1080),
            destination: target, destinationPort: port, resolvedAddress: resolved, claimedUser: user, authMethod: auth, time: time
        )
        return (facts, ident, load, via, groups)
    }
}
