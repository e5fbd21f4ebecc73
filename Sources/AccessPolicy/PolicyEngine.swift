import NetAddress
import ProxyURL

/// For which clients identd is asked, and believed, and how long to wait.
public struct IdentScope: Hashable, Sendable {
    public var networks: [IPNetwork]
    public var timeoutSeconds: Double
    public var line: Int?

    public init(networks: [IPNetwork], timeoutSeconds: Double, line: Int? = nil) {
        self.networks = networks
        self.timeoutSeconds = timeoutSeconds
        self.line = line
    }
}

/// A whole policy: rules in order, where ident is asked, the time zone of time windows,
/// and the expectations written beside it. Built by the policy language's compiler, or
/// in Swift.
public struct Policy: Sendable {
    public var rules: [Rule]
    public var identScopes: [IdentScope]
    /// The fixed offset from UTC of the policy's time windows (`timezone UTC+01:00`).
    public var utcOffsetSeconds: Int
    public var expectations: [Expectation]
    /// The `limit` lines, in order; every one that counts a session must have room.
    public var limits: [SessionLimit]
    /// `gssapi require LEVEL`: the least per-message protection a GSS-API client is
    /// granted, whatever it asks for.
    public var minimumProtection: MessageProtection = .none
    /// `gssapi local-realm REALM`: principals of these realms are users by their short
    /// name in rules (`alice@CORP.EXAMPLE` is `alice`), like ident and password users.
    public var localRealms: Set<String> = []

    public init(
        rules: [Rule], identScopes: [IdentScope] = [], utcOffsetSeconds: Int = 0, expectations: [Expectation] = [],
        limits: [SessionLimit] = []
    ) {
        self.rules = rules
        self.limits = limits
        self.identScopes = identScopes
        self.utcOffsetSeconds = utcOffsetSeconds
        self.expectations = expectations
    }

    /// The user as identd would name it: a GSS-API principal of a local realm by its
    /// short name (`alice@CORP.EXAMPLE` is `alice`); anyone else as claimed.
    public func localName(_ facts: RequestFacts) -> String? {
        guard facts.authMethod == .gssapi, !localRealms.isEmpty, let user = facts.claimedUser,
            let at = user.lastIndex(of: "@"), localRealms.contains(String(user[user.index(after: at)...]))
        else { return facts.claimedUser }
        return String(user[..<at])
    }

    /// Rules whose parents (`via`) are one of `listening`, the gateway's own addresses: a
    /// loop. Line and the parent, for `check --listen` and the start of `run`.
    public func routesToItself(listening: [IPEndpoint]) -> [(line: Int, parent: SOCKSURL)] {
        rules.compactMap { rule in
            let loop = rule.route?.first { parent in
                guard case .address(let address) = parent.host else { return false }
                return listening.contains {
                    $0.port == parent.port && ($0.address == address || $0.address == .v4(.any) || $0.address == .v6(.any))
                }
            }
            return loop.map { (rule.reference.line ?? 0, $0) }
        }
    }

    /// Some `limit` line filters by `group`.
    public var limitsNeedGroups: Bool {
        limits.contains { $0.conditions.groups != nil }
    }

    /// The first scope whose networks hold the client.
    public func identScope(for client: IPAddress) -> IdentScope? {
        identScopes.first { $0.networks.contains { $0.contains(client) } }
    }
}

/// Decides requests against a policy. `decide` uses the compiled matcher (no rule-by-rule
/// scan) and is what the gateway calls; `explain` walks every rule and says why each did
/// or did not match. Both ask identd through the lookup given with the request, at most
/// once per request and only when a rule that could decide needs it; tests assert they
/// agree. Built once per policy (the matcher is the costly part): the gateway, `test`
/// and `audit replay` pass a different lookup per request, not a new engine.
public struct PolicyEngine: PolicyDecider {
    public let policy: Policy
    private let matcher: RuleMatcher

    public init(policy: Policy) {
        self.policy = policy
        self.matcher = RuleMatcher(policy: policy)
    }

    /// `identLookup` nil: no ident client, a rule that needs ident sees "unavailable";
    /// `groupLookup` nil: no directory, a rule with `group` sees "unavailable".
    public func decide(_ facts: RequestFacts, identLookup: IdentLookup?, groupLookup: GroupLookup? = nil) async -> Decision {
        let candidates = sequence(state: matcher.candidates(for: facts)) { $0.next() }.lazy.map { policy.rules[$0] }
        // The matcher yields only rules whose conditions other than ident and group hold.
        return await walk(candidates, facts, identLookup: identLookup, groupLookup: groupLookup) { _ in nil }
    }

    /// As a `PolicyDecider` on its own, the engine has no ident client.
    public func decide(_ facts: RequestFacts) async -> Decision {
        await decide(facts, identLookup: nil)
    }

    /// As a `PolicyDecider` on its own, the engine has no directory cache.
    public func decideImmediately(_ facts: RequestFacts) -> Decision? {
        decideImmediately(facts, cachedGroups: nil)
    }

    /// `decide` without suspending: nil once a candidate rule needs identd, or groups the
    /// directory's cache does not hold (`cachedGroups`: its answer for a user, if fresh).
    public func decideImmediately(_ facts: RequestFacts, cachedGroups: ((String) -> GroupAnswer?)?) -> Decision? {
        var candidates = matcher.candidates(for: facts)
        var trace: [Decision.TraceStep] = []
        var consulted: GroupsConsulted?
        while let index = candidates.next() {
            let rule = policy.rules[index]
            if rule.requiresIdent { return nil }
            var reason = "all conditions hold"
            if let groups = rule.groups {
                guard let user = GroupCheck.verifiedUser(facts, policy: policy, identUser: nil) else {
                    trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: GroupCheck.noVerifiedUser))
                    continue
                }
                guard let answer = cachedGroups?(user) else { return nil }
                consulted = GroupsConsulted(user: user, answer: answer)
                let group = GroupCheck.evaluate(rule, groups: groups, user: user, answer: answer)
                guard group.holds else {
                    trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: group.reason ?? ""))
                    continue
                }
                if let note = group.reason { reason += " (\(note))" }
            }
            trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: true, reason: reason))
            var decision = Decision(
                rule.verdict == .allow ? .allow(route: rule.route) : .deny(.notAllowed), rule: rule.reference, trace: trace)
            decision.ruleNamesDestination = rule.namesDestination(of: facts)
            if rule.verdict == .allow, consulted == nil, policy.limitsNeedGroups,
                let user = GroupCheck.verifiedUser(facts, policy: policy, identUser: nil)
            {
                // A `limit … group` line needs them: from the cache, or the lookup decides.
                guard let answer = cachedGroups?(user) else { return nil }
                consulted = GroupsConsulted(user: user, answer: answer)
            }
            decision.groupsConsulted = consulted
            return decision
        }
        var decision = Decision(.deny(.notAllowed), rule: nil, trace: trace)
        decision.groupsConsulted = consulted
        return decision
    }

    /// An allowed decision with the policy's limits applied as `explain` and `expect`
    /// pose them: as if every limit counting the request already had `open` sessions
    /// open and `recent` started just now. The gateway counts for real (`LimitLedger`).
    public func applyingLimits(to decision: Decision, _ facts: RequestFacts, open: Int, recent: Int) -> Decision {
        guard decision.verdict == .allow,
            let refusal = LimitLedger.check(facts.attributed(by: decision), limits: policy.limits, open: open, recent: recent)
        else { return decision }
        return decision.refused(by: refusal)
    }

    public func explain(_ facts: RequestFacts, identLookup: IdentLookup?, groupLookup: GroupLookup? = nil) async -> Decision {
        await walk(policy.rules, facts, identLookup: identLookup, groupLookup: groupLookup) {
            $0.firstMismatch(facts, utcOffsetSeconds: policy.utcOffsetSeconds)
        }
    }

    /// Rules in order: the first whose conditions hold (`mismatch` nil) and whose ident
    /// check passes decides; every rule passed over is in the trace with the reason.
    private func walk(
        _ rules: some Sequence<Rule>, _ facts: RequestFacts, identLookup: IdentLookup?, groupLookup: GroupLookup?,
        mismatch: (Rule) -> String?
    ) async -> Decision {
        var ident = IdentCheck(policy: policy, lookup: identLookup)
        var groups = GroupCheck(policy: policy, lookup: groupLookup)
        var trace: [Decision.TraceStep] = []
        func decided(_ decision: Decision) async -> Decision {
            var decision = decision
            // A `limit … group` line counts by the verified user's groups: asked for an
            // allowed request even when no rule needed them.
            if decision.verdict == .allow, groups.consulted == nil, policy.limitsNeedGroups,
                let user = GroupCheck.verifiedUser(facts, policy: policy, identUser: ident.confirmedUser)
            {
                await groups.consult(user)
            }
            decision.groupsConsulted = groups.consulted
            return decision
        }
        for rule in rules {
            if let reason = mismatch(rule) {
                trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: reason))
                continue
            }
            if rule.requiresIdent, let failure = await ident.failure(for: facts, rule: rule) {
                trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: failure))
                continue
            }
            let group = await groups.holds(rule, facts, identUser: rule.requiresIdent ? ident.confirmedUser : nil)
            guard group.holds else {
                trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: false, reason: group.reason ?? ""))
                continue
            }
            let reason = group.reason.map { "all conditions hold (\($0))" } ?? "all conditions hold"
            trace.append(.init(rule: rule.reference, verdict: rule.verdict, matched: true, reason: reason))
            var decision = ident.decision(rule: rule, trace: trace)
            decision.ruleNamesDestination = rule.namesDestination(of: facts)
            return await decided(decision)
        }
        return await decided(ident.decision(rule: nil, trace: trace))
    }
}

/// The ident part of one decision: the lookup's single answer, and the refusal it
/// implies if the request ends denied.
private struct IdentCheck {
    let policy: Policy
    let lookup: IdentLookup?
    var answer: IdentAnswer?
    /// Set when an allow rule failed only on ident: a denial then says why.
    var refusal: Decision.Refusal?

    init(policy: Policy, lookup: IdentLookup?) {
        self.policy = policy
        self.lookup = lookup
    }

    /// The user identd named, once it answered with one.
    var confirmedUser: String? {
        if case .userID(let user)? = answer?.outcome { user } else { nil }
    }

    /// nil if identd confirms the rule's user, else the reason it does not.
    mutating func failure(for facts: RequestFacts, rule: Rule) async -> String? {
        let answer = await ask(facts)
        let failure: (Decision.Refusal, String)?
        let claimed = policy.localName(facts)
        switch answer {
        case .userID(let user) where claimed == nil || claimed == user:
            failure = nil
        case .userID(let user):
            failure = (.identMismatch, "ident: identd says \(user), the client claims \(claimed ?? "")")
        case .failure(let reason):
            failure = (.identUnreachable, "ident: no usable answer (\(reason.rawValue))")
        }
        guard let (kind, reason) = failure else { return nil }
        if rule.verdict == .allow, refusal == nil { refusal = kind }
        return reason
    }

    private mutating func ask(_ facts: RequestFacts) async -> IdentOutcome {
        if let answer { return answer.outcome }
        let received: IdentAnswer
        if let scope = policy.identScope(for: facts.client.address) {
            received = await lookup?(facts, scope.timeoutSeconds) ?? IdentAnswer(.failure(.unavailable))
        } else {
            received = IdentAnswer(.failure(.notAsked))
        }
        answer = received
        return received.outcome
    }

    func decision(rule: Rule?, trace: [Decision.TraceStep]) -> Decision {
        guard let rule, rule.verdict == .allow else {
            return Decision(.deny(refusal ?? .notAllowed), rule: rule?.reference, trace: trace, identAnswer: answer)
        }
        return Decision(.allow(route: rule.route), rule: rule.reference, trace: trace, identAnswer: answer)
    }
}

extension Policy {
    /// What `check --proxy-protocol-from` and `run` say of each `ident from` line when
    /// clients may come through a load balancer.
    public static func identBehindBalancerWarning(_ balancers: [IPNetwork]) -> String {
        "clients that come through the load balancers (\(balancers.map(\.description).joined(separator: ", "))) "
            + "cannot be asked: their identd answers only about connections to the balancer, so an ident "
            + "condition fails for them (SOCKS4: 92)"
    }
}
