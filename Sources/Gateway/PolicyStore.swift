import AccessPolicy
import NIOConcurrencyHelpers

/// The policy in force, swapped whole on reload. Each request reads it once, so a
/// request already being decided keeps the policy it started with.
public final class PolicyStore: PolicyDecider {
    private let current: NIOLockedValueBox<(engine: PolicyEngine, sha256: String?)>

    /// `sha256`: of the policy's text, recorded with every decision.
    public init(_ engine: PolicyEngine, sha256: String? = nil) {
        current = NIOLockedValueBox((engine, sha256))
    }

    public var engine: PolicyEngine { current.withLockedValue { $0.engine } }

    public func replace(with engine: PolicyEngine, sha256: String? = nil) {
        current.withLockedValue { $0 = (engine, sha256) }
    }

    public func decide(_ facts: RequestFacts) async -> Decision {
        let (engine, sha256) = current.withLockedValue { $0 }
        var decision = await engine.decide(facts)
        decision.policySHA256 = sha256
        return decision
    }

    public func decideImmediately(_ facts: RequestFacts) -> Decision? {
        let (engine, sha256) = current.withLockedValue { $0 }
        var decision = engine.decideImmediately(facts)
        decision?.policySHA256 = sha256
        return decision
    }
}

/// Reads a policy file and its sibling `FILE.tests`, compiles it, and runs its
/// expectations: what `run`, `check`, `test`, `explain` and SIGHUP reload share.
public enum PolicyLoader {
    public struct Loaded: Sendable {
        public var compilation: PolicyCompilation
        /// nil when the policy did not compile.
        public var report: ExpectationReport?

        /// Compiled without errors and every expectation met.
        public var isUsable: Bool { compilation.policy != nil && (report?.failures.isEmpty ?? false) }
    }

    public static func compile(file path: String) throws -> PolicyCompilation {
        let text = try TextFile.read(path)
        let testsPath = path + ".tests"
        let tests = TextFile.exists(testsPath) ? (text: try TextFile.read(testsPath), file: testsPath) : nil
        return PolicyCompiler.compile(text, file: path, tests: tests)
    }

    public static func load(file path: String) async throws -> Loaded {
        let compilation = try compile(file: path)
        guard let policy = compilation.policy else { return Loaded(compilation: compilation, report: nil) }
        return Loaded(compilation: compilation, report: await ExpectationReport.run(policy))
    }
}
