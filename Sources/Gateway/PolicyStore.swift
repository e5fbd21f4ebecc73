import AccessPolicy
import NIOConcurrencyHelpers

/// The policy in force, swapped whole on reload. Each request reads it once, so a
/// request already being decided keeps the policy it started with.
///
/// The engine is built once per policy; the ident lookup (the gateway's RFC 1413
/// client) is given with each decision.
public final class PolicyStore: PolicyDecider {
    private let current: NIOLockedValueBox<(engine: PolicyEngine, sha256: String?, generation: UInt64)>
    private let identLookup: IdentLookup?
    private let groupLookup: GroupLookup?
    /// The directory's fresh cached answers, for deciding on the event loop.
    private let cachedGroups: (@Sendable (String) -> GroupAnswer?)?
    private let limiter: SessionLimiter

    /// `sha256`: of the policy's text, recorded with every decision.
    public init(
        _ engine: PolicyEngine, sha256: String? = nil, identLookup: IdentLookup? = nil, groupLookup: GroupLookup? = nil,
        cachedGroups: (@Sendable (String) -> GroupAnswer?)? = nil
    ) {
        current = NIOLockedValueBox((engine, sha256, 0))
        self.identLookup = identLookup
        self.groupLookup = groupLookup
        self.cachedGroups = cachedGroups
        limiter = SessionLimiter(limits: engine.policy.limits)
    }

    public var engine: PolicyEngine { current.withLockedValue { $0.engine } }

    /// The SHA-256 of the text the engine in force was compiled from, if known.
    public var sha256: String? { current.withLockedValue { $0.sha256 } }

    public var generation: UInt64 { current.withLockedValue { $0.generation } }

    /// Sessions open under the policy's `sessions` limits: they stay counted under the
    /// new policy's limits.
    public func replace(with engine: PolicyEngine, sha256: String? = nil) {
        current.withLockedValue {
            $0 = (engine, sha256, $0.generation + 1)
            limiter.adopt(engine.policy.limits)
        }
    }

    public var minimumProtection: MessageProtection { engine.policy.minimumProtection }

    public func admit(_ facts: RequestFacts) -> LimitLedger.Admission {
        limiter.admit(facts)
    }

    public func release(_ lease: SessionLease) {
        limiter.release(lease)
    }

    public func decide(_ facts: RequestFacts) async -> Decision {
        let (engine, sha256, _) = current.withLockedValue { $0 }
        var decision = await engine.decide(facts, identLookup: identLookup, groupLookup: groupLookup)
        decision.policySHA256 = sha256
        return decision
    }

    public func decideImmediately(_ facts: RequestFacts) -> Decision? {
        let (engine, sha256, _) = current.withLockedValue { $0 }
        var decision = engine.decideImmediately(facts, cachedGroups: cachedGroups)
        decision?.policySHA256 = sha256
        return decision
    }
}
