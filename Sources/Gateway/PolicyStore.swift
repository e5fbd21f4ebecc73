import AccessPolicy
import NIOConcurrencyHelpers

/// The policy in force, swapped whole on reload. Each request reads it once, so a
/// request already being decided keeps the policy it started with.
///
/// The engine is built once per policy; the ident lookup (the gateway's RFC 1413
/// client) is given with each decision.
public final class PolicyStore: PolicyDecider {
    /// One object per policy in force: a decision takes one reference to it, not a copy
    /// of the engine (which would retain each of its parts).
    private final class InForce: Sendable {
        let engine: PolicyEngine
        let sha256: String?
        let generation: UInt64

        init(_ engine: PolicyEngine, _ sha256: String?, _ generation: UInt64) {
            self.engine = engine
            self.sha256 = sha256
            self.generation = generation
        }
    }

    private let current: NIOLockedValueBox<InForce>
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
        current = NIOLockedValueBox(InForce(engine, sha256, 0))
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
            $0 = InForce(engine, sha256, $0.generation + 1)
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
        let inForce = current.withLockedValue { $0 }
        var decision = await inForce.engine.decide(facts, identLookup: identLookup, groupLookup: groupLookup)
        decision.policySHA256 = inForce.sha256
        return decision
    }

    public func decideImmediately(_ facts: RequestFacts) -> Decision? {
        let inForce = current.withLockedValue { $0 }
        var decision = inForce.engine.decideImmediately(facts, cachedGroups: cachedGroups)
        decision?.policySHA256 = inForce.sha256
        return decision
    }
}
