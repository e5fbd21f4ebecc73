/// What the directory (NSS: files, sssd, LDAP through nslcd) says of a user's groups.
public enum GroupAnswer: Hashable, Sendable {
    /// The user's groups, the primary one included.
    case member(of: Set<String>)
    /// The directory answered: there is no such user.
    case noSuchUser
    /// The directory did not answer (time-out, an NSS error, nslcd down): an allow rule
    /// with `group` does not match, a deny rule with `group` does. An unknown never
    /// widens access.
    case unavailable(String)
}

/// Asks the directory for a verified user's groups; the gateway's caches and bounds.
public typealias GroupLookup = @Sendable (_ user: String) async -> GroupAnswer

/// The groups one decision consulted, for its record and `explain`.
public struct GroupsConsulted: Hashable, Sendable {
    public var user: String
    public var answer: GroupAnswer

    public init(user: String, answer: GroupAnswer) {
        self.user = user
        self.answer = answer
    }
}

/// The group part of one decision: the directory's answer per user (asked at most once
/// each), and what was consulted.
struct GroupCheck {
    let policy: Policy
    let lookup: GroupLookup?
    private var answers: [String: GroupAnswer] = [:]
    private(set) var consulted: GroupsConsulted?

    static let noVerifiedUser = "no verified user: a name that is only claimed has no groups"

    init(policy: Policy, lookup: GroupLookup?) {
        self.policy = policy
        self.lookup = lookup
    }

    /// Whether the rule's `group` condition holds, with the words for the trace.
    /// `identUser`: the user identd confirmed for this rule (its `ident` passed), if any.
    mutating func holds(_ rule: Rule, _ facts: RequestFacts, identUser: String?) async -> (holds: Bool, reason: String?) {
        guard let groups = rule.groups else { return (true, nil) }
        // Only a verified identity has groups: a password's or GSS-API's user (a local
        // realm's principal by its short name), or a user identd confirmed on this rule.
        // A name that is only claimed could be anyone's.
        guard let user = Self.verifiedUser(facts, policy: policy, identUser: identUser) else {
            return (false, Self.noVerifiedUser)
        }
        let answer = await consult(user)
        return Self.evaluate(rule, groups: groups, user: user, answer: answer)
    }

    /// The directory's answer about `user`, asked at most once per decision; it is what
    /// the decision records (a rule's `group`, or a `limit … group` line, asked).
    @discardableResult
    mutating func consult(_ user: String) async -> GroupAnswer {
        let answer: GroupAnswer
        if let known = answers[user] {
            answer = known
        } else {
            answer = await lookup?(user) ?? .unavailable("no directory")
            answers[user] = answer
        }
        consulted = GroupsConsulted(user: user, answer: answer)
        return answer
    }

    /// The verified user a `group` condition asks about: a password's or GSS-API's (a
    /// local realm's principal by its short name), or the one identd confirmed.
    static func verifiedUser(_ facts: RequestFacts, policy: Policy, identUser: String?) -> String? {
        facts.authMethod != .none ? policy.localName(facts) : identUser
    }

    /// Whether `groups` holds for `user` given the directory's answer, with the words.
    static func evaluate(_ rule: Rule, groups: Set<String>, user: String, answer: GroupAnswer) -> (holds: Bool, reason: String?) {
        switch answer {
        case .member(let of) where !of.isDisjoint(with: groups):
            return (true, nil)
        case .member(let of):
            return (false, "user \(user) is in no group of \(Rule.list(groups)) (in \(of.isEmpty ? "none" : Rule.list(of)))")
        case .noSuchUser:
            return (false, "the directory has no user \(user)")
        case .unavailable(let why) where rule.verdict == .deny:
            return (true, "groups unavailable: \(why); a deny rule with group matches when groups cannot be known")
        case .unavailable(let why):
            return (false, "groups unavailable: \(why)")
        }
    }
}
