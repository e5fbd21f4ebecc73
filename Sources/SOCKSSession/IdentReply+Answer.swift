import AccessPolicy
import IdentProtocol

// What an identd's reply means to the policy: IdentProtocol reads the wire, AccessPolicy
// decides on `IdentAnswer`s; this is the one translation between them.

extension IdentReply {
    /// What the bytes received so far mean for the policy, with the evidence (the raw
    /// line, the opsys, a reason): nil while no whole line has arrived. RFC 1413's
    /// meanings: a USERID whose opsys is OTHER names no user (the token is not a user
    /// name); the ERROR types NO-USER, HIDDEN-USER and INVALID-PORT are told apart, any
    /// other (UNKNOWN-ERROR, X-…) is an unknown error; anything not RFC 1413 (a wrong
    /// port pair, missing fields, over 1000 octets without a line end) is malformed.
    public static func answer(to received: [UInt8], for query: IdentQuery) -> IdentAnswer? {
        switch firstLine(in: received) {
        case .needMoreBytes:
            return nil
        case .tooLong:
            return IdentAnswer(
                .failure(.malformed), rawReply: String(decoding: received.prefix(200), as: UTF8.self),
                detail: "over \(maxLineLength) octets without a line end")
        case .line(let line):
            let raw = String(decoding: line, as: UTF8.self)
            switch parse(line, for: query) {
            case .failure(let failure):
                return IdentAnswer(.failure(.malformed), rawReply: raw, detail: failure.description)
            case .success(.userID(let user, let opsys, _)) where opsys.uppercased() == "OTHER":
                return IdentAnswer(.failure(.other), rawReply: raw, opsys: opsys, detail: "OTHER opsys token \(user)")
            case .success(.userID(let user, let opsys, _)):
                return IdentAnswer(.userID(user), rawReply: raw, opsys: opsys)
            case .success(.error(let type)):
                let failure: IdentFailure =
                    switch type {
                    case "NO-USER": .noUser
                    case "HIDDEN-USER": .hidden
                    case "INVALID-PORT": .invalidPort
                    default: .unknownError
                    }
                return IdentAnswer(.failure(failure), rawReply: raw, detail: "ERROR \(type)")
            }
        }
    }

    /// The identd closed the connection before a whole line.
    public static func closedEarly(after received: [UInt8]) -> IdentAnswer {
        IdentAnswer(
            .failure(.malformed), rawReply: received.isEmpty ? nil : String(decoding: received, as: UTF8.self),
            detail: "closed without a line end")
    }
}
