import AccessPolicy
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SOCKSSession

#if canImport(Glibc)
    import Glibc
#endif

/// Verified users' groups from NSS (files, sssd, LDAP through nslcd: whatever
/// /etc/nsswitch.conf says), for the policy's `group` conditions: `getpwnam_r` for the
/// primary group, `getgrouplist` for the rest. NSS may block for seconds, so lookups run
/// on a thread pool of their own, at most one in flight per user (later askers wait for
/// it), and answers, negative ones too, are cached for `ttl` in a bounded cache. A
/// directory that does not answer is told apart from "no such user": the policy then
/// fails closed.
public final class DirectoryGroups: Sendable {
    private struct State {
        var cache = BoundedCache<String, (answer: GroupAnswer, expires: NIODeadline)>(capacity: 4096)
        var inFlight: [String: Task<GroupAnswer, Never>] = [:]
    }

    private let threadPool: NIOThreadPool
    private let ttl: TimeAmount
    /// How long an "unavailable" answer is kept, at most.
    private let unavailableLifetime: TimeAmount
    private let state = NIOLockedValueBox(State())
    private let metrics: GatewayMetrics?
    /// The NSS call; tests give their own.
    private let resolve: @Sendable (String) -> GroupAnswer

    public init(
        threadPool: NIOThreadPool, ttl: TimeAmount, unavailableLifetime: TimeAmount = .seconds(5), metrics: GatewayMetrics? = nil,
        resolve: @escaping @Sendable (String) -> GroupAnswer = DirectoryGroups.nss
    ) {
        self.threadPool = threadPool
        self.ttl = ttl
        self.unavailableLifetime = unavailableLifetime
        self.metrics = metrics
        self.resolve = resolve
    }

    /// The policy engine's `GroupLookup`.
    public var lookup: GroupLookup {
        { [self] user in await self.groups(of: user) }
    }

    /// The cached answer for `user`, if still fresh: lets a decision be made on the event
    /// loop, without a task, when the directory was asked lately.
    public var cached: @Sendable (String) -> GroupAnswer? {
        { [self] user in
            let now = NIODeadline.now()
            let answer = state.withLockedValue { state in state.cache[user].flatMap { $0.expires > now ? $0.answer : nil } }
            if answer != nil { metrics?.directoryLookup(.cacheHit) }
            return answer
        }
    }

    public func groups(of user: String) async -> GroupAnswer {
        let now = NIODeadline.now()
        let task: Task<GroupAnswer, Never> = state.withLockedValue { state in
            if let cached = state.cache[user], cached.expires > now {
                metrics?.directoryLookup(.cacheHit)
                return Task { cached.answer }
            }
            if let running = state.inFlight[user] { return running }
            let running = Task { await self.look(up: user) }
            state.inFlight[user] = running
            return running
        }
        return await task.value
    }

    private func look(up user: String) async -> GroupAnswer {
        let started = ContinuousClock.now
        let answer: GroupAnswer
        do {
            answer = try await threadPool.runIfActive { [resolve] in resolve(user) }
        } catch {
            answer = .unavailable("the lookup did not run: \(error)")
        }
        metrics?.directoryLookup(DirectoryLookupOutcome(answer), after: .now - started)
        // "The directory did not answer" is kept briefly: long enough that a down directory
        // is not asked again for every request, short enough that its users are back soon
        // after it is.
        var lifetime = ttl
        if case .unavailable = answer { lifetime = min(ttl, unavailableLifetime) }
        state.withLockedValue { state in
            state.inFlight[user] = nil
            state.cache.set((answer, .now() + lifetime), for: user)
        }
        return answer
    }

    /// NSS's answer for `user`.
    public static func nss(_ user: String) -> GroupAnswer {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16 * 1024)
        let status = getpwnam_r(user, &entry, &buffer, buffer.count, &found)
        // glibc: 0 and no entry for "no such user"; an error number when NSS failed.
        // (The error number is the NSS module's: nslcd down reads "No such file or
        // directory", which would mislead an operator without the words around it.)
        guard status == 0 else {
            return .unavailable("the directory did not answer (getpwnam_r: \(String(cString: strerror(status))))")
        }
        guard found != nil else { return .noSuchUser }
        var count: Int32 = 64
        var ids = [gid_t](repeating: 0, count: Int(count))
        for _ in 0..<4 where getgrouplist(user, entry.pw_gid, &ids, &count) == -1 {
            ids = [gid_t](repeating: 0, count: Int(count))
        }
        guard count >= 0, Int(count) <= ids.count else { return .unavailable("getgrouplist: the list kept growing") }
        var names: Set<String> = []
        var group = Glibc.group()
        var named: UnsafeMutablePointer<Glibc.group>?
        for id in ids.prefix(Int(count)) {
            let status = getgrgid_r(id, &group, &buffer, buffer.count, &named)
            guard status == 0 else { return .unavailable("getgrgid_r(\(id)): \(String(cString: strerror(status)))") }
            if named != nil, let name = group.gr_name { names.insert(String(cString: name)) }
        }
        // getgrouplist skips a source that failed (nslcd down mid-lookup) without saying
        // so: the user is asked for again, and a directory gone meanwhile is unavailable,
        // not "in fewer groups" (which would let a deny rule with `group` miss).
        let again = getpwnam_r(user, &entry, &buffer, buffer.count, &found)
        guard again == 0, found != nil else { return .unavailable("getpwnam_r after getgrouplist: the directory stopped answering") }
        return .member(of: names)
    }
}

/// How a directory lookup went, for the metrics.
enum DirectoryLookupOutcome: String, CaseIterable {
    case member, noSuchUser = "no_such_user", unavailable, cacheHit = "cache_hit"

    init(_ answer: GroupAnswer) {
        switch answer {
        case .member: self = .member
        case .noSuchUser: self = .noSuchUser
        case .unavailable: self = .unavailable
        }
    }
}
