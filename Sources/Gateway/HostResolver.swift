import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import PosixEndpoint
import SOCKSSession

#if canImport(Glibc)
    import Glibc
#endif

/// Resolves destination host names with getaddrinfo(3) on a thread pool of its own.
///
/// NIO's own resolver runs getaddrinfo serially per event loop, so one slow name would
/// hold up every other. Here each lookup takes a pool thread and is bounded by a
/// time-out; the caller then decides and connects to exactly the addresses returned,
/// never resolving the name again (no gap for DNS rebinding between check and connect).
///
/// getaddrinfo cannot be cancelled: a lookup that times out still holds its thread until
/// the system resolver gives up. So the pool is the resolver's alone (password hashing
/// keeps its own threads), and at most `maxInFlight` lookups run or wait at once; beyond
/// that a name fails at once (the client hears "host unreachable"), counted in
/// `saturated` and logged once per episode.
///
/// A name's addresses are kept for `cacheTTL` after a lookup that found some (`--resolve-
/// cache`), at most `cacheCapacity` names, the oldest dropped first: a page's requests to
/// one host, or a client's repeated connections, look it up once. What is decided is still
/// what is connected to, whether the addresses are fresh or kept. Names that did not
/// resolve are not kept (a client can then make lookups, bounded by `maxInFlight`, but not
/// fill the cache with names that do not exist).
public struct HostResolver: Sendable {
    public typealias Lookup = @Sendable (String) -> [IPAddress]

    let threadPool: NIOThreadPool
    let timeout: TimeAmount
    let maxInFlight: Int
    let cacheTTL: TimeAmount
    static let cacheCapacity = 4096
    private let metrics: GatewayMetrics?
    private let lookup: Lookup
    private let state = NIOLockedValueBox(State())

    struct State {
        var cache = BoundedCache<String, (addresses: [IPAddress], expires: NIODeadline)>(capacity: HostResolver.cacheCapacity)
        /// For each name being looked up, who waits for its answer (the first asked for it).
        var waiting: [String: [@Sendable ([IPAddress]) -> Void]] = [:]
        var inFlight = 0
        /// Lookups refused because `maxInFlight` were under way, since the start.
        var saturated = 0
        var saturatedEpisode = false
    }

    public init(
        threadPool: NIOThreadPool, timeout: TimeAmount, maxInFlight: Int = 256, cacheTTL: TimeAmount = .zero,
        metrics: GatewayMetrics? = nil, lookup: @escaping Lookup = Self.getaddrinfo
    ) {
        self.threadPool = threadPool
        self.timeout = timeout
        self.maxInFlight = maxInFlight
        self.cacheTTL = cacheTTL
        self.metrics = metrics
        self.lookup = lookup
    }

    /// The addresses a lookup of `name` found less than `cacheTTL` ago, if any.
    func cachedAddresses(of name: String) -> [IPAddress]? {
        guard cacheTTL > .zero else { return nil }
        let key = Self.cacheKey(name)
        let now = NIODeadline.now()
        let kept = state.withLockedValue { state -> [IPAddress]? in
            guard let entry = state.cache[key] else { return nil }
            guard entry.expires > now else {
                state.cache.remove(key)
                return nil
            }
            return entry.addresses
        }
        if kept != nil { metrics?.nameLookup(.kept) }
        return kept
    }

    /// How many names are kept now.
    var cachedNames: Int { state.withLockedValue { $0.cache.count } }

    /// Drops every kept name (a reload: /etc/hosts or DNS may have been changed for it).
    func forgetKeptNames() {
        state.withLockedValue { $0.cache.removeAll() }
    }

    /// Host names are case-insensitive (RFC 4343): one entry for every spelling.
    private static func cacheKey(_ name: String) -> String { name.lowercased() }

    /// Looks `name` up on this (a resolver) thread; the answer is counted, and kept if it
    /// found addresses.
    private static func lookUp(
        _ name: String, with lookup: Lookup, keepingFor ttl: TimeAmount, in state: NIOLockedValueBox<State>, metrics: GatewayMetrics?
    ) -> [IPAddress] {
        let started = metrics == nil ? nil : ContinuousClock.now
        let addresses = lookup(name)
        if let started { metrics?.nameLookup(addresses.isEmpty ? .unresolved : .resolved, after: .now - started) }
        guard ttl > .zero, !addresses.isEmpty else { return addresses }
        let expires = NIODeadline.now() + ttl
        state.withLockedValue { $0.cache.set((addresses, expires), for: cacheKey(name)) }
        return addresses
    }

    /// Lookups refused for saturation since the start.
    public var saturated: Int { state.withLockedValue { $0.saturated } }

    /// The addresses in getaddrinfo's order; empty if the name does not resolve in time,
    /// or if `maxInFlight` lookups are under way. `logger` hears of saturation, once per
    /// episode.
    public func resolve(_ name: String, on eventLoop: any EventLoop, logger: Logger? = nil) -> EventLoopFuture<[IPAddress]> {
        if let cached = cachedAddresses(of: name) { return eventLoop.makeSucceededFuture(cached) }
        let promise = eventLoop.makePromise(of: [IPAddress].self)
        // Whichever comes first answers (a promise takes its first value only).
        let timer = eventLoop.scheduleTask(in: timeout) { promise.succeed([]) }
        resolve(name, logger: logger) { addresses in
            timer.cancel()
            promise.succeed(addresses)
        }
        return promise.futureResult
    }

    /// For a caller that is not an event loop (the direct driver's loops, which ask
    /// `cachedAddresses` first): `answer` runs on a resolver thread, or at once if refused,
    /// with what `resolve(_:on:)` would give, but without its time-out: the caller stops
    /// waiting after `timeout` itself. One thread hop fewer each way than a future on an
    /// event loop.
    ///
    /// Requests for a name whose lookup is under way wait for that lookup's answer: one
    /// getaddrinfo and one place among `maxInFlight` however many ask at once, so a burst
    /// to one name (or a client repeating one slow name) cannot take the places other
    /// names need.
    func resolve(_ name: String, logger: Logger?, answer: @escaping @Sendable ([IPAddress]) -> Void) {
        let key = Self.cacheKey(name)
        switch admit(key, answer, logger: logger) {
        case .joined, .refused:
            return
        case .admitted:
            break
        }
        let (lookup, state, ttl, metrics) = (self.lookup, self.state, self.cacheTTL, self.metrics)
        threadPool.submit { work in
            let addresses = work == .active ? Self.lookUp(name, with: lookup, keepingFor: ttl, in: state, metrics: metrics) : []
            let waiting = state.withLockedValue { state in
                state.inFlight -= 1
                return state.waiting.removeValue(forKey: key) ?? []
            }
            for answer in waiting { answer(addresses) }
        }
    }

    private enum Admission { case admitted, joined, refused }

    /// Joins the lookup of `key` under way, or takes a place among the `maxInFlight`
    /// lookups for a new one, or counts a refusal (and answers it: nothing). Logs the start
    /// and the end of a saturated episode.
    private func admit(_ key: String, _ answer: @escaping @Sendable ([IPAddress]) -> Void, logger: Logger?) -> Admission {
        let (admission, episodeChanged) = state.withLockedValue { state -> (Admission, Bool) in
            if state.waiting[key] != nil {
                state.waiting[key, default: []].append(answer)
                return (.joined, false)
            }
            let admitted = state.inFlight < maxInFlight
            if admitted {
                state.inFlight += 1
                state.waiting[key] = [answer]
            } else {
                state.saturated += 1
            }
            // An episode starts with the first refusal and ends with the next admission.
            defer { state.saturatedEpisode = !admitted }
            return (admitted ? .admitted : .refused, state.saturatedEpisode == admitted)
        }
        switch (admission, episodeChanged) {
        case (.refused, true):
            logger?.error(
                "resolver saturated: \(maxInFlight) lookups under way; new names fail at once (logged once until it recovers)")
        case (.admitted, true):
            logger?.notice("resolver accepting lookups again")
        default:
            break
        }
        switch admission {
        case .refused:
            metrics?.nameLookup(.refused)
            answer([])
        case .joined:
            metrics?.nameLookup(.joined)
        case .admitted:
            break
        }
        return admission
    }

    public static func getaddrinfo(_ name: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard Glibc.getaddrinfo(name, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [IPAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let socketAddress = entry.pointee.ai_addr, let endpoint = IPEndpoint(sockaddr: socketAddress) {
                addresses.append(endpoint.address)
            }
            cursor = entry.pointee.ai_next
        }
        // getaddrinfo lists an address once per protocol unless told otherwise; keep the first.
        var seen = Set<IPAddress>()
        return addresses.filter { seen.insert($0).inserted }
    }
}

/// `identgate_name_lookups_total`'s `outcome` label.
enum NameLookupOutcome: String, CaseIterable {
    /// Found kept from an earlier lookup (`--resolve-cache`).
    case kept
    /// Waited for a lookup of the same name already under way.
    case joined
    /// getaddrinfo found addresses; did not; was not asked (`maxInFlight` lookups under way).
    case resolved, unresolved, refused
}
