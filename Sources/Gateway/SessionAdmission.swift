import AccessPolicy
import NIOCore

/// A session's place under the policy's limits (`limit` lines): taken at its first
/// allowed decision (a UDP association's when it starts, as no rule decides the
/// ASSOCIATE itself), given back when the client's connection closes, however the
/// session ends (`release`). One per session, used on the session's thread.
final class SessionAdmission {
    private let policy: any PolicyDecider
    private var admitted = false
    private var lease: SessionLease?
    private var released = false

    /// The direct driver calls `release` itself when the client's connection closes.
    init(policy: any PolicyDecider) {
        self.policy = policy
    }

    /// Released when `clientClosed` completes; made on that future's event loop.
    convenience init(policy: any PolicyDecider, clientClosed: EventLoopFuture<Void>) {
        self.init(policy: policy)
        clientClosed.assumeIsolated().whenComplete { _ in self.release() }
    }

    /// The client's connection closed: its place is given back (once).
    func release() {
        released = true
        if let lease {
            self.lease = nil
            policy.release(lease)
        }
    }

    /// nil if the session is admitted, now or earlier (a host name's next address, BIND's
    /// peer, a UDP destination); else the limit that refuses it.
    func admit(_ facts: RequestFacts) -> LimitRefusal? {
        guard !admitted else { return nil }
        switch policy.admit(facts) {
        case .refused(let refusal):
            return refusal
        case .admitted(let lease):
            admitted = true
            self.lease = lease
            // The client has gone already: given back at once.
            if released { release() }
            return nil
        }
    }
}
