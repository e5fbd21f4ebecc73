import AccessPolicy
import NetAddress
import ProxyURL

/// `identgate diff`: every request whose outcome two policies decide differently, found
/// exactly, not by sampling. The request space is split along every boundary either
/// policy draws, only as far as a region needs (a region is split when a rule, `ident`,
/// `group` or `limit` line holds on part of it); where both policies are settled, the
/// engines themselves decide one request of the region, which stands for all of it. See
/// docs/architecture.md, "Policy diff".
public struct PolicyDiff: Sendable {
    /// What one policy does with a request, as far as the client or the operator can
    /// tell: not which line decided (lines move when nothing changes).
    public struct Outcome: Hashable, Sendable {
        public var verdict: Decision.Verdict
        /// For a deny: `notAllowed`, `identUnreachable` (SOCKS4 92), `identMismatch` (93),
        /// `notChainable`.
        public var refusal: String?
        public var route: [String]?
        /// The `limit` lines that count the request, as they read.
        public var limits: [String]
    }

    /// One policy's side of a difference: the outcome and the rule that decided.
    public struct Side: Hashable, Sendable {
        public var outcome: Outcome
        public var rule: RuleReference?
    }

    /// Requests that both policies decide alike within, differently from each other.
    public struct Difference: Sendable {
        /// Where, dimension by dimension (`RegionText`).
        public var region: [String: String]
        public var old: Side
        public var new: Side
        /// One request of the region, as `explain` options (the same on both sides but
        /// `--at`, which is local time in each policy's zone).
        public var oldExample: [String]
        public var newExample: [String]

        /// The region itself: boxes of the request space.
        let boxes: [Region]

        /// The region as one line: "version socks4 from 10.0.0.0/8 :22".
        public var regionLine: String { RegionText.line(region) }
    }

    public struct TooComplex: Error, CustomStringConvertible {
        public var description: String
    }

    /// The most regions one comparison settles before it gives up (memory and time bound).
    public static let mostRegions = 2_000_000

    public let differences: [Difference]
    /// Regions the comparison settled (its work).
    public let regionsSettled: Int
    /// Settings the rules do not show that differ (`timezone`, `gssapi require`, ident time-outs).
    public let settingChanges: [String]

    public init(old: Policy, new: Policy) async throws(TooComplex) {
        let space = RequestSpace([old, new])
        guard space.groups.count <= RequestSpace.mostGroups else {
            throw TooComplex(
                description:
                    "the policies name \(space.groups.count) groups; an exact comparison takes at most \(RequestSpace.mostGroups)")
        }
        let sides = (PolicyConditions(old, space: space), PolicyConditions(new, space: space))
        let suffixes = SameRules(old: old, new: new)
        var found: [Found] = []
        var settled = 0
        // Depth first, with a stack of its own: a policy of thousands of rules splits deep.
        let seeds = Self.seeds(suffixes, space: space, conditions: sides)
        var pending: [Work] = seeds.map { Work(region: $0, old: 0, new: 0, asked: false, oldAllow: 0, newAllow: 0) }
        while let work = pending.popLast() {
            // The same rules from here on decide alike, unless a rule passed over already
            // asked identd or the directory (its refusal or groups count, not its verdict).
            if !work.asked, suffixes.same(from: work.old, work.new) { continue }
            let (oldSettlement, newSettlement) = (Self.settle(sides.0, work.region, from: work.old), Self.settle(sides.1, work.region, from: work.new))
            // Denied alike: one side denies the whole region by a rule, and the other has
            // nothing left that could allow any of it. No need to split it further.
            // (The search for an allow rule resumes where the region's parent found one:
            // what holds nowhere in a region holds nowhere in its parts.)
            var hints = (old: max(work.oldAllow, oldSettlement.rule), new: max(work.newAllow, newSettlement.rule))
            if !work.asked, !oldSettlement.asked, !newSettlement.asked {
                if Self.denies(sides.0, oldSettlement) {
                    hints.new = Self.firstAllowing(sides.1, work.region, from: hints.new)
                    if hints.new == sides.1.rules.count { continue }
                }
                if Self.denies(sides.1, newSettlement) {
                    hints.old = Self.firstAllowing(sides.0, work.region, from: hints.old)
                    if hints.old == sides.0.rules.count { continue }
                }
            }
            // Rules before where each side stopped hold nowhere in the region: its parts start there.
            if let (dimension, part) = oldSettlement.split ?? newSettlement.split {
                let halves = work.region.split(dimension, by: part)
                let asked = work.asked || oldSettlement.asked || newSettlement.asked
                pending.append(
                    Work(region: halves.outside, old: oldSettlement.rule, new: newSettlement.rule, asked: asked, oldAllow: hints.old, newAllow: hints.new))
                pending.append(
                    Work(region: halves.inside, old: oldSettlement.rule, new: newSettlement.rule, asked: asked, oldAllow: hints.old, newAllow: hints.new))
            } else {
                let region = work.region
                settled += 1
                guard settled <= Self.mostRegions else {
                    throw TooComplex(description: "the comparison needs more than \(Self.mostRegions) regions")
                }
                guard let example = Example(region, space: space) else { continue }
                let oldSide = await Self.decide(sides.0, example)
                let newSide = await Self.decide(sides.1, example)
                if oldSide.outcome != newSide.outcome { found.append(Found(region: region, old: oldSide, new: newSide, example: example, space: space)) }
            }
        }
        regionsSettled = settled
        differences = Found.merged(found).map { $0.difference(space: space, old: old, new: new) }
        settingChanges = Self.settingChanges(old, new)
    }

    /// How far one policy is settled on a region: `rule` is the first rule that holds
    /// anywhere in it (`rules.count`: none does); `split`, if the region must be split
    /// first (that rule, or a limit, holds on part of it only).
    private struct Settlement {
        var rule: Int
        var split: (Dimension, IntervalSet)?
        /// A rule passed over asked identd or the directory.
        var asked = false
    }

    /// A region still to settle, and where each policy's rules start for it.
    private struct Work {
        var region: Region
        var old: Int
        var new: Int
        var asked: Bool
        /// No allow rule before these can hold anywhere in the region, nor leave a refusal.
        var oldAllow: Int
        var newAllow: Int
    }

    /// Where a difference can be. With the same settings, the rules the policies share at
    /// their start decide alike, and so do those they share at their end for a request
    /// that reaches them alike: only a request that meets a changed rule's own conditions
    /// (it holds there, or asked identd or the directory there) can be decided differently.
    /// So the comparison explores the changed rules' reach (made disjoint), not the whole
    /// space: a one-line change in a policy of thousands of rules costs that line's reach.
    private static func seeds(_ same: SameRules, space: RequestSpace, conditions: (PolicyConditions, PolicyConditions)) -> [Region] {
        guard same.sameSettings else { return [space.everything] }
        let (old, new) = (same.oldRules, same.newRules)
        var prefix = 0
        while prefix < min(old.count, new.count), old[prefix] == new[prefix] { prefix += 1 }
        var suffix = 0
        while suffix < min(old.count, new.count) - prefix, old[old.count - 1 - suffix] == new[new.count - 1 - suffix] { suffix += 1 }
        let changed = old[prefix..<(old.count - suffix)] + new[prefix..<(new.count - suffix)]
        var seeds: [Region] = []
        for rule in changed {
            for reach in conditions.0.reach(of: rule) {
                // Made disjoint from the seeds before it: no request is compared twice.
                var pieces = [reach]
                for seed in seeds { pieces = pieces.flatMap { $0.subtracting(seed) } }
                seeds += pieces
            }
        }
        return seeds
    }

    /// The side denies every request of the region by one rule (or the final deny).
    private static func denies(_ side: PolicyConditions, _ settlement: Settlement) -> Bool {
        settlement.split == nil && (settlement.rule == side.rules.count || side.policy.rules[settlement.rule].verdict == .deny)
    }

    /// The first allow rule from `start` on that could allow a request of the region, or
    /// leave an ident refusal on one (`rules.count`: none; the side denies all of it).
    private static func firstAllowing(_ side: PolicyConditions, _ region: Region, from start: Int) -> Int {
        guard start < side.rules.count else { return start }
        let candidates = side.allowCandidates(in: region, from: start) ?? Array(start..<side.rules.count)
        for index in candidates where side.policy.rules[index].verdict == .allow {
            if side.ruledOut(index, in: region) { continue }
            if case .nowhere = side.rules[index].truth(in: region) {} else { return index }
            if let own = side.asking[index] {
                if case .nowhere = own.truth(in: region) {} else { return index }
            }
        }
        return side.rules.count
    }

    private static func settle(_ side: PolicyConditions, _ region: Region, from start: Int) -> Settlement {
        var settlement = Settlement(rule: start)
        while settlement.rule < side.rules.count {
            let index = settlement.rule
            if side.ruledOut(index, in: region) {
                settlement.rule += 1
                continue
            }
            switch side.rules[index].truth(in: region) {
            case .nowhere:
                if let own = side.asking[index], case .everywhere = own.truth(in: region) { settlement.asked = true }
                settlement.rule += 1
            case .split(let dimension, let part):
                settlement.split = (dimension, part)
                return settlement
            case .everywhere:
                guard side.policy.rules[index].verdict == .allow else { return settlement }
                for limit in side.limits {
                    if case .split(let dimension, let part) = limit.truth(in: region) {
                        settlement.split = (dimension, part)
                        return settlement
                    }
                }
                return settlement
            }
        }
        return settlement
    }

    private static func decide(_ side: PolicyConditions, _ example: Example) async -> Side {
        await decide(side.engine, side.policy, example.facts, ident: example.ident, groups: example.groups)
    }

    /// What the engine decides for one request, as far as a difference goes.
    static func decide(
        _ engine: PolicyEngine, _ policy: Policy, _ request: RequestFacts, ident: IdentAnswer, groups: GroupAnswer
    ) async -> Side {
        let decision = await engine.decide(request, identLookup: { _, _ in ident }, groupLookup: { _ in groups })
            .checked(request, destinationIsGateway: false)
        var limits: [String] = []
        if decision.verdict == .allow {
            let facts = request.attributed(by: decision)
            limits = policy.limits.filter { $0.subject(of: facts) != nil }.map(\.description)
        }
        // Only SOCKS4 tells an ident refusal apart (92, 93); SOCKS5 and HTTP clients get
        // the one "not allowed" for all of them.
        let socks4 = request.version == .socks4 || request.version == .socks4a
        let refusal: String? =
            switch decision.refusal {
            case nil: nil
            case .notAllowed?: "notAllowed"
            case .identUnreachable?: socks4 ? "identUnreachable" : "notAllowed"
            case .identMismatch?: socks4 ? "identMismatch" : "notAllowed"
            case .notChainable?: "notChainable"
            case let other?: "\(other)"
            }
        return Side(
            outcome: Outcome(verdict: decision.verdict, refusal: refusal, route: decision.route?.map(\.description), limits: limits),
            rule: decision.rule)
    }

    private static func settingChanges(_ old: Policy, _ new: Policy) -> [String] {
        var changes: [String] = []
        if old.minimumProtection != new.minimumProtection {
            changes.append("gssapi require: \(old.minimumProtection.rawValue) → \(new.minimumProtection.rawValue)")
        }
        let timeouts = { (policy: Policy) in policy.identScopes.map { "\($0.networks.map(\.description).joined(separator: ", ")) \($0.timeoutSeconds)s" } }
        if timeouts(old) != timeouts(new) {
            changes.append("ident scopes and time-outs: \(timeouts(old).joined(separator: "; ")) → \(timeouts(new).joined(separator: "; "))")
        }
        return changes
    }
}

/// Whether the two policies' rules from a pair of positions on are the same in all but
/// their lines and labels, with the same settings around them: then every region from
/// there on is decided alike, and the comparison skips it.
private final class SameRules {
    private let old: [Int]
    private let new: [Int]
    let sameSettings: Bool
    let oldRules: [Rule]
    let newRules: [Rule]
    /// Pairs of positions already compared rule by rule.
    private var compared: [Pair: Bool] = [:]

    private struct Pair: Hashable {
        var old: Int
        var new: Int
    }

    init(old: Policy, new: Policy) {
        func meaning(_ rule: Rule) -> Rule {
            var rule = rule
            rule.reference = RuleReference()
            rule.text = ""
            return rule
        }
        oldRules = old.rules.map(meaning)
        newRules = new.rules.map(meaning)
        func suffixHashes(_ rules: [Rule]) -> [Int] {
            var hashes = [Int](repeating: 0, count: rules.count + 1)
            for index in rules.indices.reversed() {
                var hasher = Hasher()
                hasher.combine(rules[index])
                hasher.combine(hashes[index + 1])
                hashes[index] = hasher.finalize()
            }
            return hashes
        }
        self.old = suffixHashes(oldRules)
        self.new = suffixHashes(newRules)
        let limits = { (policy: Policy) in
            policy.limits.map { limit -> SessionLimit in
                var limit = limit
                limit.reference = RuleReference()
                limit.conditions = meaning(limit.conditions)
                return limit
            }
        }
        sameSettings =
            limits(old) == limits(new) && old.identScopes.map(\.networks) == new.identScopes.map(\.networks)
            && old.localRealms == new.localRealms && old.utcOffsetSeconds == new.utcOffsetSeconds
    }

    func same(from oldStart: Int, _ newStart: Int) -> Bool {
        guard sameSettings, old[oldStart] == new[newStart], oldRules.count - oldStart == newRules.count - newStart else {
            return false
        }
        let pair = Pair(old: oldStart, new: newStart)
        if let known = compared[pair] { return known }
        let same = oldRules[oldStart...].elementsEqual(newRules[newStart...])
        compared[pair] = same
        return same
    }
}
