import AccessPolicy
import NIOCore

/// A session's place under the policy's limits (`limit` lines): taken at its first
/// allowed decision (a UDP association's when it starts, as no rule decides the
/// ASSOCIATE itself), given back when the client's connection closes, however the
/// session ends. One per session, used on the session's event loop.
final class SessionAdmission {
    private let policy: any PolicyDecider
    private let clientClosed: EventLoopFuture<Void>
    private var admitted = false

    init(policy: any PolicyDecider, clientClosed: EventLoopFuture<Void>) {
        self.policy = policy
        self.clientClosed = clientClosed
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
            if let lease {
                // Runs at once if the client has already gone.
                clientClosed.whenComplete { [policy] _ in policy.release(lease) }
            }
            return nil
        }
    }
}
