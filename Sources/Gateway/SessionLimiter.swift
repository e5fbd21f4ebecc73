import AccessPolicy
import NIOCore
import Synchronization

/// The gateway's count of sessions under the policy's limits, shared by every event
/// loop: one `LimitLedger` behind a lock, taken once when a session is admitted and once
/// when it ends. On reload the open sessions are counted under the new limits.
final class SessionLimiter: Sendable {
    private let ledger: Mutex<LimitLedger>

    init(limits: [SessionLimit]) {
        ledger = Mutex(LimitLedger(limits: limits))
    }

    func admit(_ facts: RequestFacts) -> LimitLedger.Admission {
        let now = Int64(clamping: NIODeadline.now().uptimeNanoseconds)
        return ledger.withLock { $0.admit(facts, now: now) }
    }

    func release(_ lease: SessionLease) {
        ledger.withLock { $0.release(lease) }
    }

    func adopt(_ limits: [SessionLimit]) {
        ledger.withLock { $0 = $0.adopting(limits) }
    }
}
