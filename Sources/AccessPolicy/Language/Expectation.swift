import ProxyURL

/// An `expect` line: a request and the outcome the policy author promises for it.
public struct Expectation: Sendable {
    public enum Result: String, Hashable, Sendable {
        case allow, deny
        case identUnreachable = "92"
        case identMismatch = "93"
        case limitReached = "limit"

        var isSOCKS4Reply: Bool { self == .identUnreachable || self == .identMismatch }
    }

    public var result: Result
    /// The request; its `time`, if any, is local time in the policy's zone (see `facts(in:)`).
    public var facts: RequestFacts
    /// What identd answers in this test; nil: no identd answers (unreachable).
    public var ident: IdentOutcome?
    /// The load the request meets (`open N`, `recent N`): sessions already open, and
    /// started just now, in every limit that counts it.
    public var load: (open: Int, recent: Int) = (0, 0)
    /// `via URL`: the request is allowed and goes through this parent first.
    public var via: SOCKSURL?
    /// What the directory answers for the verified user (`groups …`, `groups-unavailable`);
    /// nil: a member of no group.
    public var groups: GroupAnswer?
    public var file: String
    public var line: Int
    public var lineText: String

    /// The request with its time moved from the policy's zone to UTC.
    public func facts(in policy: Policy) -> RequestFacts {
        var facts = self.facts
        facts.time = facts.time.map { $0 - Int64(policy.utcOffsetSeconds) }
        return facts
    }

    /// An identd that answers as this expectation says.
    public var identLookup: IdentLookup {
        let answer = ident ?? .failure(.unreachable)
        return { _, _ in IdentAnswer(answer) }
    }

    /// A directory that answers as this expectation says.
    public var groupLookup: GroupLookup {
        let answer = groups ?? .member(of: [])
        return { _ in answer }
    }

    public func isMet(by decision: Decision) -> Bool {
        if let via, decision.route?.first?.description != via.description { return false }
        return switch result {
        case .allow: decision.verdict == .allow
        case .deny: decision.verdict == .deny
        case .identUnreachable: decision.verdict == .deny && decision.refusal == .identUnreachable
        case .identMismatch: decision.verdict == .deny && decision.refusal == .identMismatch
        case .limitReached: decision.limit != nil
        }
    }
}

/// Runs a policy's expectations.
public struct ExpectationReport: Sendable {
    public struct Failure: Sendable {
        public var expectation: Expectation
        /// The full explanation of what the policy decided instead.
        public var decision: Decision
    }

    public var passed: Int
    public var failures: [Failure]

    public static func run(_ policy: Policy) async -> ExpectationReport {
        await run(policy, engine: PolicyEngine(policy: policy))
    }

    /// With the engine already built for `policy` (a reload builds it once, for the
    /// tests and then for the gateway).
    public static func run(_ policy: Policy, engine: PolicyEngine) async -> ExpectationReport {
        var passed = 0
        var failures: [Failure] = []
        for expectation in policy.expectations {
            let facts = expectation.facts(in: policy)
            let (open, recent) = expectation.load
            let decision = engine.applyingLimits(
                to: await engine.decide(facts, identLookup: expectation.identLookup, groupLookup: expectation.groupLookup), facts, open: open, recent: recent)
            if expectation.isMet(by: decision) {
                passed += 1
            } else {
                let explained = await engine.explain(facts, identLookup: expectation.identLookup, groupLookup: expectation.groupLookup)
                failures.append(
                    Failure(
                        expectation: expectation,
                        decision: engine.applyingLimits(to: explained, facts, open: open, recent: recent)))
            }
        }
        return ExpectationReport(passed: passed, failures: failures)
    }
}
