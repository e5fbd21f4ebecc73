import AccessPolicy
import NetAddress
import ProxyURL

/// A UDP association's decisions, as a pure value: which destinations are decided and
/// how (directly, through the parent, dropped), which are being decided or resolved, the
/// rate at which new ones may be, the parent relay's state, and what was counted. The
/// association (Gateway) owns the sockets and asks this what to do with each datagram;
/// nothing here knows a socket or a clock (the caller gives the second).
///
/// Bounded whatever the client sends: at most `Limits.destinations` verdicts and
/// `Limits.names` names remembered (oldest added dropped first: true LRU would cost a
/// reorder per datagram), one lookup per name and one decision per destination in flight,
/// at most `Limits.decisionsPerSecond` new destinations decided (and recorded) a second.
/// A policy reload (a new generation) decides every destination again.
public struct UDPDestinations: Sendable {
    public enum Verdict: Hashable, Sendable {
        case denied, direct, viaParent
    }

    /// The parent's UDP association (`via` on a udp rule): one per association, asked for
    /// by the first destination that needs it, through that rule's route.
    public enum Parent: Hashable, Sendable {
        /// No `via` rule has sent a destination through a parent yet.
        case unused
        case connecting(route: [SOCKSURL])
        case ready(route: [SOCKSURL])
        case failed
    }

    public struct Counts: Hashable, Sendable {
        public var relayed = 0
        public var replies = 0
        public var fragments = 0
        public var foreign = 0
        public var denied = 0
        public var malformed = 0
        /// Dropped while their destination was resolved or decided, or the parent associated.
        public var pending = 0
        /// Dropped over `Limits.decisionsPerSecond` new destinations a second.
        public var overRate = 0
    }

    public enum Limits {
        public static let destinations = 1024
        public static let names = 256
        public static let decisionsPerSecond = 50
    }

    /// What to do with a datagram to a destination.
    public enum Send: Hashable, Sendable {
        case direct
        case viaParent
        /// A new destination: decide it; the datagram waits for the verdict.
        case decide
        /// Dropped (and counted).
        case drop
    }

    /// What to do with a datagram to a name.
    public enum Lookup: Hashable, Sendable {
        /// Resolved before: to this address (nil: the name does not resolve; dropped).
        case known(IPAddress?)
        /// Resolve it (one lookup per name at a time); then `resolved(_:to:)`.
        case resolve
        /// A lookup of this name is under way: dropped (and counted).
        case drop
    }

    private var verdicts = BoundedCache<IPEndpoint, Verdict>(capacity: Limits.destinations)
    private var generation: UInt64 = 0
    private var deciding: Set<IPEndpoint> = []
    private var names = BoundedCache<String, IPAddress?>(capacity: Limits.names)
    private var resolving: Set<String> = []
    private var decisionsThisSecond = (second: Int64(0), count: 0)
    public private(set) var parent = Parent.unused
    public var counts = Counts()

    public init() {}

    public mutating func send(to destination: IPEndpoint, policyGeneration: UInt64, second: Int64) -> Send {
        if policyGeneration != generation {
            verdicts.removeAll()
            generation = policyGeneration
        }
        if let verdict = verdicts[destination] { return sending(verdict) }
        guard !deciding.contains(destination) else {
            counts.pending += 1
            return .drop
        }
        if decisionsThisSecond.second != second { decisionsThisSecond = (second, 0) }
        guard decisionsThisSecond.count < Limits.decisionsPerSecond else {
            counts.overRate += 1
            return .drop
        }
        decisionsThisSecond.count += 1
        deciding.insert(destination)
        return .decide
    }

    public mutating func lookUp(_ name: String) -> Lookup {
        if let known = names[name] { return .known(known) }
        guard resolving.insert(name).inserted else {
            counts.pending += 1
            return .drop
        }
        return .resolve
    }

    public mutating func resolved(_ name: String, to address: IPAddress?) {
        resolving.remove(name)
        names.set(address, for: name)
    }

    /// The decision for `destination`: remembered, and what to do with the datagram that
    /// asked (once its record is written, when the relay waits for it). A `via` rule's
    /// destination goes through this association's parent, which the first such rule
    /// chooses (`parentToStart`); a rule naming other parents is not served, nor sent
    /// directly.
    public mutating func decided(_ destination: IPEndpoint, _ decision: Decision) -> (send: Send, parentToStart: [SOCKSURL]?) {
        deciding.remove(destination)
        var start: [SOCKSURL]?
        let verdict: Verdict
        switch (decision.outcome, parent) {
        case (.deny, _): verdict = .denied
        case (.allow(let route?), .unused) where !route.isEmpty:
            parent = .connecting(route: route)
            start = route
            verdict = .viaParent
        case (.allow(let route?), .connecting(let chosen)) where !route.isEmpty, (.allow(let route?), .ready(let chosen)) where !route.isEmpty:
            verdict = chosen == route ? .viaParent : .denied
        case (.allow(let route?), .failed) where !route.isEmpty:
            verdict = .denied
        case (.allow, _):
            verdict = .direct
        }
        verdicts.set(verdict, for: destination)
        return (sending(verdict), start)
    }

    /// The first datagram to a destination waited for its decision's record: now written.
    public mutating func recordWritten(_ destination: IPEndpoint) -> Send {
        guard let verdict = verdicts[destination] else { return .drop }
        return sending(verdict)
    }

    /// The decision's record could not be written: nothing is sent, and the destination is
    /// decided again later.
    public mutating func recordFailed(_ destination: IPEndpoint) {
        verdicts.remove(destination)
        counts.denied += 1
    }

    /// No decision in time: not remembered, so a later datagram asks again.
    public mutating func decisionTimedOut(_ destination: IPEndpoint) {
        deciding.remove(destination)
        counts.denied += 1
    }

    public mutating func parentAssociated() {
        if case .connecting(let route) = parent { parent = .ready(route: route) }
    }

    public mutating func parentFailed() {
        parent = .failed
    }

    /// A reply may reach the client only from a destination it sent to, the way it was
    /// sent (directly, or through the parent's relay).
    public func expectsReply(from source: IPEndpoint, viaParent: Bool) -> Bool {
        verdicts[source] == (viaParent ? .viaParent : .direct)
    }

    private mutating func sending(_ verdict: Verdict) -> Send {
        switch verdict {
        case .direct: return .direct
        case .viaParent: return .viaParent
        case .denied:
            counts.denied += 1
            return .drop
        }
    }
}
