import ProxyURL

/// Which rule decided, as a person would look it up: its line in the policy file (nil
/// for rules built in code) and its label.
public struct RuleReference: Hashable, Sendable, CustomStringConvertible {
    public var line: Int?
    public var label: String?

    public init(line: Int? = nil, label: String? = nil) {
        self.line = line
        self.label = label
    }

    public var description: String {
        switch (line, label) {
        case (let line?, let label?): "line \(line) (\(label))"
        case (let line?, nil): "line \(line)"
        case (nil, let label?): label
        case (nil, nil): "unnamed rule"
        }
    }
}

/// The outcome of one request, with the reasons.
///
/// The outcome is `allow(route)` or `deny(refusal)`: a deny without its reason cannot be
/// written, and a refusal that is not the rules' own (a limit, a loop through the
/// gateway, a command the route cannot carry, a deadline) says so in its own case, with
/// its words for the audit record (`Refusal.reason`).
public struct Decision: Hashable, Sendable {
    public enum Verdict: String, Hashable, Sendable {
        case allow, deny
    }

    public enum Outcome: Hashable, Sendable {
        /// Through the allowing rule's parents (`via`), tried in order; nil: directly.
        case allow(route: [SOCKSURL]?)
        case deny(Refusal)
    }

    /// Why a denied request is denied, in the terms SOCKS replies can tell apart.
    public enum Refusal: Hashable, Sendable {
        /// A rule denied it, or no rule allowed it.
        case notAllowed
        /// An allow rule needed ident and the client's identd gave no usable answer.
        case identUnreachable
        /// An allow rule needed ident and identd named a different user.
        case identMismatch
        /// A rule allowed it, but a `limit` was reached.
        case limitReached(LimitRefusal)
        /// A rule allowed it through parents (`via`), and none of them can carry this
        /// command (UDP needs a SOCKS5 parent): refused rather than sent directly.
        case notChainable
        /// A rule allowed it, but the destination is the gateway itself (a loop), and the
        /// rule does not name it.
        case destinationIsGateway
        /// The decision did not come within its deadline (an identd that held it up).
        case timedOut

        /// The audit record's reason for a refusal that is not a rule's verdict; nil for
        /// the rules' own. A limit's may hold a client-chosen user name: escape to print.
        public var reason: String? {
            switch self {
            case .notAllowed, .identUnreachable, .identMismatch: nil
            case .limitReached(let limit): limit.reason
            case .notChainable: "refused: UDP needs a SOCKS5 parent; not sent directly either"
            case .destinationIsGateway: "refused: the destination is the gateway itself"
            case .timedOut: "decision timed out"
            }
        }
    }

    /// One rule considered, and why it did or did not match.
    public struct TraceStep: Hashable, Sendable {
        public var rule: RuleReference
        public var verdict: Verdict
        public var matched: Bool
        public var reason: String

        public init(rule: RuleReference, verdict: Verdict, matched: Bool, reason: String) {
            self.rule = rule
            self.verdict = verdict
            self.matched = matched
            self.reason = reason
        }
    }

    public var outcome: Outcome
    /// The deciding rule; nil when the implicit final deny decided.
    public var rule: RuleReference?
    public var trace: [TraceStep]
    /// The client's identd answer, if a rule needed it (asked at most once).
    public var identAnswer: IdentAnswer?
    /// The directory's answer for the user a `group` condition asked about, if one did.
    public var groupsConsulted: GroupsConsulted?
    /// The policy that decided (SHA-256 of its text), when the decider knows it.
    public var policySHA256: String?
    /// The deciding rule names the destination itself (`Rule.namesDestination`).
    public var ruleNamesDestination = false

    public var verdict: Verdict {
        if case .allow = outcome { .allow } else { .deny }
    }

    /// nil when allowed.
    public var refusal: Refusal? {
        if case .deny(let refusal) = outcome { refusal } else { nil }
    }

    /// The allowing rule's parents (`via`), in the order they are tried; nil: direct (or
    /// denied).
    public var route: [SOCKSURL]? {
        if case .allow(let route) = outcome { route } else { nil }
    }

    /// The limit that refused what a rule allowed.
    public var limit: RuleReference? {
        if case .deny(.limitReached(let refusal)) = outcome { refusal.limit.reference } else { nil }
    }

    public var ident: IdentOutcome? { identAnswer?.outcome }

    public init(_ outcome: Outcome, rule: RuleReference?, trace: [TraceStep], identAnswer: IdentAnswer? = nil) {
        self.outcome = outcome
        self.rule = rule
        self.trace = trace
        self.identAnswer = identAnswer
    }

    /// This decision, refused after the rules allowed it: the deciding rule stays named,
    /// and the trace says why.
    public func refused(_ refusal: Refusal, by reference: RuleReference? = nil) -> Decision {
        var refused = self
        refused.outcome = .deny(refusal)
        refused.trace.append(
            TraceStep(rule: reference ?? rule ?? RuleReference(), verdict: .deny, matched: true, reason: refusal.reason ?? "refused"))
        return refused
    }
}

/// Anything that can decide a request: the rule engine, a compiled policy file. The
/// gateway knows only this protocol, so a new engine needs no change there. It is
/// asynchronous because an engine may have to ask the client's identd.
public protocol PolicyDecider: Sendable {
    func decide(_ facts: RequestFacts) async -> Decision

    /// The decision, if it can be made without suspending (no identd to ask); else nil,
    /// and the caller uses `decide`. Lets the gateway decide on its event loop without
    /// a task and a thread hop per request.
    func decideImmediately(_ facts: RequestFacts) -> Decision?

    /// Changes whenever the policy in force changes (a reload): what was decided under
    /// an older generation is decided again.
    var generation: UInt64 { get }

    /// Counts a session the policy allowed under its limits, or refuses it. The lease,
    /// if any, is given back with `release` when the session ends.
    func admit(_ facts: RequestFacts) -> LimitLedger.Admission

    func release(_ lease: SessionLease)

    /// The least per-message protection a GSS-API client is granted.
    var minimumProtection: MessageProtection { get }
}

extension PolicyDecider {
    public func decideImmediately(_ facts: RequestFacts) -> Decision? { nil }
    public var generation: UInt64 { 0 }
    /// A decider without limits admits every session.
    public func admit(_ facts: RequestFacts) -> LimitLedger.Admission { .admitted(nil) }
    public func release(_ lease: SessionLease) {}
    public var minimumProtection: MessageProtection { .none }
}
