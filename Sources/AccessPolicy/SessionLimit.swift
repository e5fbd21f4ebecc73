import NetAddress

/// A `limit` line: how many sessions one client address, one user or everyone together
/// may have open at once, or may start in a time window. A session is one client
/// connection's request (CONNECT, BIND or UDP ASSOCIATE), counted from the moment it is
/// admitted until the client's connection closes (docs/policy-language.md, "Limits").
public struct SessionLimit: Hashable, Sendable, CustomStringConvertible {
    public enum Measure: Hashable, Sendable {
        /// Sessions open at once.
        case sessions(Int)
        /// Sessions started: bursts of up to `count`, refilled evenly over `seconds`
        /// (a token bucket), so `20/s` allows 20 at once and then one every 50 ms.
        case rate(count: Int, seconds: Int)
    }

    /// Whose sessions one counter counts.
    public enum Scope: String, Hashable, Sendable {
        /// Each client address has its own counter.
        case client = "per client"
        /// Each verified user (a password, GSS-API, or identd confirming the claimed
        /// name) has its own counter. A name that is only claimed is counted per client
        /// instead (every unverified name from one address shares that address's counter),
        /// so nobody can use up another's share by claiming their name; a request that
        /// claims no user is not counted.
        case user = "per user"
        /// One counter for every session the limit's conditions select.
        case total
    }

    public var measure: Measure
    public var scope: Scope
    public var reference: RuleReference
    /// Which sessions count: the `limit` line's conditions (command, from, user, version,
    /// auth), as a rule's; its verdict means nothing here.
    public var conditions: Rule

    /// The most a limit may say (sessions, or sessions per window): a larger number is a
    /// typo, not a limit.
    public static let largestCount = 1_000_000

    public init(_ measure: Measure, _ scope: Scope, conditions: Rule = Rule(.allow), reference: RuleReference) {
        self.measure = measure
        self.scope = scope
        self.conditions = conditions
        self.reference = reference
    }

    /// The counter this request counts against, or nil if the limit does not count it.
    public func subject(of facts: RequestFacts) -> LimitSubject? {
        guard conditions.conditionsHold(facts, utcOffsetSeconds: 0), groupsMismatch(facts) == nil else { return nil }
        switch scope {
        case .client: return .client(facts.client.address.unmapped)
        case .user:
            guard facts.claimedUser != nil else { return nil }
            return facts.verifiedUser.map(LimitSubject.user) ?? .unverifiedUsers(facts.client.address.unmapped)
        case .total: return .total
        }
    }

    /// Why the limit does not count this request, for `explain`; nil if it does.
    public func whyNotCounted(_ facts: RequestFacts) -> String? {
        if let mismatch = conditions.firstMismatch(facts, utcOffsetSeconds: 0) ?? groupsMismatch(facts) { return mismatch }
        if scope == .user, facts.claimedUser == nil { return "no user was claimed" }
        return nil
    }

    /// Why a `group` filter does not count the request; nil if it does. The groups are the
    /// directory's answer the decision consulted (`verifiedGroups`). A directory that did
    /// not answer counts the request: an unknown never widens access.
    func groupsMismatch(_ facts: RequestFacts) -> String? {
        guard let groups = conditions.groups else { return nil }
        switch facts.verifiedGroups {
        case .unavailable?: return nil
        case .member(let of)?: return of.isDisjoint(with: groups) ? "the user is in no group of \(Rule.list(groups))" : nil
        case .noSuchUser?, nil: return "no verified user's groups"
        }
    }

    /// `64 open sessions per client`, `20 new sessions a second per user`.
    public var description: String {
        let scopeText = scope == .total ? "in total" : scope.rawValue
        switch measure {
        case .sessions(let count):
            return "\(count) open session\(count == 1 ? "" : "s") \(scopeText)"
        case .rate(let count, let seconds):
            let window = seconds == 1 ? "a second" : seconds == 60 ? "a minute" : "in \(seconds) s"
            return "\(count) new session\(count == 1 ? "" : "s") \(window) \(scopeText)"
        }
    }
}

/// One counter of a limit: a client address, a user, or everyone.
public enum LimitSubject: Hashable, Sendable, CustomStringConvertible {
    case client(IPAddress)
    case user(String)
    /// A per-user limit's counter for the names one client claims without proof.
    case unverifiedUsers(IPAddress)
    case total

    public var description: String {
        switch self {
        case .client(let address): "client \(address)"
        case .user(let user): "user \(user)"
        case .unverifiedUsers(let address): "unverified names from client \(address)"
        case .total: "all clients"
        }
    }
}

/// A session refused because a limit was reached.
public struct LimitRefusal: Hashable, Sendable {
    public var limit: SessionLimit
    public var subject: LimitSubject

    public init(limit: SessionLimit, subject: LimitSubject) {
        self.limit = limit
        self.subject = subject
    }

    /// For the trace, the log and the audit record (`reason`). The subject may hold a
    /// client-chosen user name: whoever prints this escapes it.
    public var reason: String {
        "limit reached: \(limit.description) (\(subject))"
    }
}

/// A session's hold on the counters of the `sessions` limits that count it; given back
/// when the session ends.
public struct SessionLease: Hashable, Sendable {
    let id: UInt64
}

/// Counts the sessions open and started under a policy's limits. A value with no clock
/// of its own (the caller gives the time), so the gateway's limiter, `explain` and
/// `expect` share the same arithmetic. Only counters in use are kept: a counter at zero
/// and a full bucket are dropped, so memory follows the sessions open and recent.
public struct LimitLedger: Sendable {
    public private(set) var limits: [SessionLimit]

    private struct Counter: Hashable {
        var limit: Int
        var subject: LimitSubject
    }

    /// A token bucket: `tokens` at `updated` (nanoseconds), refilled continuously.
    private struct Bucket {
        var tokens: Double
        var updated: Int64
    }

    private var open: [Counter: Int] = [:]
    private var buckets: [Counter: Bucket] = [:]
    /// Each open session's facts, so that its counters can be found again at release
    /// and after a reload, when the limits change.
    private var leases: [UInt64: RequestFacts] = [:]
    private var nextLease: UInt64 = 1
    /// The bucket count at which full buckets are next swept out, and when they last
    /// were: a sweep runs when the count has doubled or a second has passed, so its cost
    /// is shared among the admissions and idle clients are forgotten soon.
    private var sweepAt = 1024
    private var sweptAt: Int64 = 0

    public init(limits: [SessionLimit]) {
        self.limits = limits
    }

    public enum Admission: Sendable {
        /// Counted. The lease is nil when no `sessions` limit counts the session (there
        /// is nothing to give back).
        case admitted(SessionLease?)
        case refused(LimitRefusal)
    }

    /// Admits a session if every limit that counts it has room, and counts it in all of
    /// them; else counts it nowhere, so that a client over its own limit uses up no
    /// one else's share (nor the total's). `now`: a monotonic time in nanoseconds.
    public mutating func admit(_ facts: RequestFacts, now: Int64) -> Admission {
        // Two passes over the limits (a handful), so that nothing is allocated per
        // session: first every limit that counts it must have room, then it is counted.
        for index in limits.indices {
            let limit = limits[index]
            guard let subject = limit.subject(of: facts) else { continue }
            let counter = Counter(limit: index, subject: subject)
            let full =
                switch limit.measure {
                case .sessions(let most): open[counter, default: 0] >= most
                case .rate(let count, let seconds): Self.refilled(buckets[counter], count: count, seconds: seconds, now: now).tokens < 1
                }
            if full { return .refused(LimitRefusal(limit: limit, subject: subject)) }
        }
        var holds = false
        for index in limits.indices {
            guard let subject = limits[index].subject(of: facts) else { continue }
            let counter = Counter(limit: index, subject: subject)
            switch limits[index].measure {
            case .sessions:
                open[counter, default: 0] += 1
                holds = true
            case .rate(let count, let seconds):
                var bucket = Self.refilled(buckets[counter], count: count, seconds: seconds, now: now)
                bucket.tokens -= 1
                buckets[counter] = bucket
            }
        }
        if buckets.count >= sweepAt || (now - sweptAt >= 1_000_000_000 && !buckets.isEmpty) { sweepFullBuckets(now: now) }
        guard holds else { return .admitted(nil) }
        let lease = SessionLease(id: nextLease)
        nextLease += 1
        leases[lease.id] = facts
        return .admitted(lease)
    }

    /// The session has ended: its `sessions` counters go down. A lease given back twice,
    /// or one from before a reload that no longer counts, changes nothing.
    public mutating func release(_ lease: SessionLease) {
        guard let facts = leases.removeValue(forKey: lease.id) else { return }
        for index in limits.indices {
            guard case .sessions = limits[index].measure, let subject = limits[index].subject(of: facts) else { continue }
            let counter = Counter(limit: index, subject: subject)
            let remaining = (open[counter] ?? 1) - 1
            open[counter] = remaining > 0 ? remaining : nil
        }
    }

    /// The ledger for a reloaded policy's limits: every session still open is counted
    /// under them (even beyond a lowered limit: open sessions are never cut), and keeps
    /// its lease. Rates start afresh.
    public func adopting(_ newLimits: [SessionLimit]) -> LimitLedger {
        var ledger = LimitLedger(limits: newLimits)
        ledger.nextLease = nextLease
        for (id, facts) in leases {
            let counters = ledger.sessionCounters(of: facts)
            guard !counters.isEmpty else { continue }
            for counter in counters { ledger.open[counter, default: 0] += 1 }
            ledger.leases[id] = facts
        }
        return ledger
    }

    /// Sessions open right now under a `sessions` limit (for tests).
    var openSessions: Int { leases.count }

    /// Rate buckets kept (for tests: full ones are swept out).
    var bucketCount: Int { buckets.count }

    /// What `explain` and `expect` ask: would this request be admitted if every limit
    /// that counts it already had `open` sessions open and `recent` started just now?
    public static func check(_ facts: RequestFacts, limits: [SessionLimit], open: Int, recent: Int) -> LimitRefusal? {
        for limit in limits {
            guard let subject = limit.subject(of: facts) else { continue }
            let reached =
                switch limit.measure {
                case .sessions(let most): open >= most
                case .rate(let count, _): recent >= count
                }
            if reached { return LimitRefusal(limit: limit, subject: subject) }
        }
        return nil
    }

    private func sessionCounters(of facts: RequestFacts) -> [Counter] {
        limits.indices.compactMap { index in
            guard case .sessions = limits[index].measure, let subject = limits[index].subject(of: facts) else { return nil }
            return Counter(limit: index, subject: subject)
        }
    }

    private static func refilled(_ bucket: Bucket?, count: Int, seconds: Int, now: Int64) -> Bucket {
        let capacity = Double(count)
        guard let bucket else { return Bucket(tokens: capacity, updated: now) }
        let elapsed = Double(max(0, now - bucket.updated)) / 1e9
        return Bucket(tokens: min(capacity, bucket.tokens + elapsed * capacity / Double(seconds)), updated: now)
    }

    /// Drops the buckets that have refilled: they say nothing a new bucket would not.
    private mutating func sweepFullBuckets(now: Int64) {
        buckets = buckets.filter { counter, bucket in
            guard case .rate(let count, let seconds) = limits[counter.limit].measure else { return false }
            return Self.refilled(bucket, count: count, seconds: seconds, now: now).tokens < Double(count)
        }
        sweepAt = max(1024, buckets.count * 2)
        sweptAt = now
    }
}

extension Decision {
    /// This allowed decision, refused because a limit was reached: the allowing rule
    /// stays named, the limit is named beside it, and the trace ends with the limit.
    public func refused(by refusal: LimitRefusal) -> Decision {
        refused(.limitReached(refusal), by: refusal.limit.reference)
    }

    /// A session no rule decides (a UDP association as it starts), refused by a limit.
    public static func limited(_ refusal: LimitRefusal) -> Decision {
        Decision(.deny(.limitReached(refusal)), rule: nil, trace: []).refused(by: refusal)
    }
}
