// The client side of the Identification Protocol (RFC 1413) as pure functions: the
// query line, finding the reply line in received bytes, and parsing it. No I/O.

/// One question to an identd: who owns the connection from `serverPort` (on the
/// identd's host: the SOCKS client's source port) to `clientPort` (on the asker's host:
/// the gateway's port the client connected to)?
public struct IdentQuery: Hashable, Sendable {
    public var serverPort: UInt16
    public var clientPort: UInt16

    public init(serverPort: UInt16, clientPort: UInt16) {
        self.serverPort = serverPort
        self.clientPort = clientPort
    }

    /// `<port-on-server> , <port-on-client>` and CR LF.
    public var line: String { "\(serverPort) , \(clientPort)\r\n" }
}

/// A well-formed reply.
public enum IdentResponse: Hashable, Sendable {
    /// `USERID : <opsys>[,<charset>] : <user-id>`.
    case userID(String, opsys: String, charset: String?)
    /// `ERROR : <type>`: INVALID-PORT, NO-USER, HIDDEN-USER, UNKNOWN-ERROR or X-….
    case error(String)
}

public struct IdentParseFailure: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
}

public enum IdentReply {
    /// RFC 1413: a reply line is at most 1000 octets; give up after that many without
    /// a line end.
    public static let maxLineLength = 1000
    /// RFC 1413: a user-id is at most 512 octets.
    public static let maxUserIDLength = 512

    public enum LineSearch: Hashable, Sendable {
        case line([UInt8])
        case needMoreBytes
        case tooLong
    }

    /// The first line in `received`, without its end (LF, or CR LF: a bare LF is
    /// accepted, as many daemons send it).
    public static func firstLine(in received: [UInt8]) -> LineSearch {
        guard let newline = received.prefix(maxLineLength + 1).firstIndex(of: UInt8(ascii: "\n")) else {
            return received.count > maxLineLength ? .tooLong : .needMoreBytes
        }
        var line = Array(received[..<newline])
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        return .line(line)
    }

    /// Parses a reply line. Fields are split on the first three colons only, because the
    /// user-id may itself hold colons. Spaces and tabs around the port pair, the reply
    /// type, the opsys and the charset are dropped; of the user-id, leading spaces and
    /// tabs are dropped (daemons differ in sending one) and trailing ones kept, as the
    /// RFC says the user-id runs to the line end. The echoed port pair must equal the
    /// query's.
    public static func parse(_ line: [UInt8], for query: IdentQuery) -> Result<IdentResponse, IdentParseFailure> {
        func failure(_ text: String) -> Result<IdentResponse, IdentParseFailure> {
            .failure(IdentParseFailure(description: text))
        }
        guard let text = String(validating: line, as: UTF8.self) else { return failure("not UTF-8 text") }
        let fields = text.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
        guard fields.count >= 3 else { return failure("fewer than three fields") }
        let ports = fields[0].split(separator: ",", omittingEmptySubsequences: false).map { trimmed($0) }
        guard ports.count == 2, let server = UInt16(ports[0]), let client = UInt16(ports[1]) else {
            return failure("the port pair '\(fields[0])' is not two numbers")
        }
        guard server == query.serverPort, client == query.clientPort else {
            return failure("the reply is about \(server) , \(client), not \(query.serverPort) , \(query.clientPort)")
        }
        switch trimmed(fields[1]).uppercased() {
        case "ERROR":
            guard fields.count == 3 else { return failure("an ERROR reply has three fields") }
            let type = trimmed(fields[2])
            return type.isEmpty ? failure("an ERROR reply without a type") : .success(.error(type.uppercased()))
        case "USERID":
            guard fields.count == 4 else { return failure("a USERID reply has four fields") }
            let system = fields[2].split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false).map { trimmed($0) }
            guard let opsys = system.first, !opsys.isEmpty else { return failure("a USERID reply without an opsys") }
            let user = String(fields[3].drop { $0 == " " || $0 == "\t" })
            guard !user.isEmpty else { return failure("an empty user-id") }
            guard user.utf8.count <= maxUserIDLength else { return failure("a user-id over \(maxUserIDLength) octets") }
            return .success(.userID(user, opsys: opsys, charset: system.count == 2 ? system[1] : nil))
        case let other:
            return failure("unknown reply type '\(other)'")
        }
    }

    private static func trimmed(_ text: Substring) -> String {
        String(text.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
