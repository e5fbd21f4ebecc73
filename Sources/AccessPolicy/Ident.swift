/// What the client's identd said about the request's connection, as the policy needs
/// it. The IDENT client produces it; `explain` and policy tests state it.
public enum IdentOutcome: Hashable, Sendable, CustomStringConvertible {
    /// A USERID reply with this user-id.
    case userID(String)
    /// No usable answer.
    case failure(IdentFailure)

    public var description: String {
        switch self {
        case .userID(let user): "user-id \(user)"
        case .failure(let failure): "no user-id (\(failure.rawValue))"
        }
    }
}

public enum IdentFailure: String, Hashable, Sendable, CaseIterable {
    /// The identd could not be reached (refused, unreachable, time-out before connect).
    case unreachable
    /// Connected, but no reply line in time.
    case timeout
    case noUser = "no-user"
    case hidden
    case invalidPort = "invalid-port"
    case unknownError = "unknown-error"
    /// A reply that is not RFC 1413 (wrong port pair, missing fields, over 1000 octets,
    /// a close without a line end).
    case malformed
    /// An OTHER opsys reply: not a user name (RFC 1413), so it names nobody.
    case other
    /// The policy does not ask identd for this client's network (`ident from …`).
    case notAsked = "not-asked"
    /// No ident client is configured.
    case unavailable
}

/// An ident outcome with its evidence, for logs and the audit record.
public struct IdentAnswer: Hashable, Sendable {
    public var outcome: IdentOutcome
    /// The reply line as received, if one came.
    public var rawReply: String?
    public var opsys: String?
    /// Why there is no user-id, in words.
    public var detail: String?
    public var durationMs: Int?

    public init(
        _ outcome: IdentOutcome, rawReply: String? = nil, opsys: String? = nil, detail: String? = nil, durationMs: Int? = nil
    ) {
        self.outcome = outcome
        self.rawReply = rawReply
        self.opsys = opsys
        self.detail = detail
        self.durationMs = durationMs
    }
}

/// Asks the client's identd about the request's connection, with a time-out. Injected
/// into the engine, which calls it at most once per request and only when a rule that
/// could decide the request needs ident.
public typealias IdentLookup = @Sendable (_ facts: RequestFacts, _ timeoutSeconds: Double) async -> IdentAnswer
