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

/// Asks the client's identd about the request's connection, with a time-out. Injected
/// into the engine, which calls it at most once per request and only when a rule that
/// could decide the request needs ident.
public typealias IdentLookup = @Sendable (_ facts: RequestFacts, _ timeoutSeconds: Double) async -> IdentOutcome
