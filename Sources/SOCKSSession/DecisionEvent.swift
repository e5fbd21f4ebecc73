import AccessPolicy

/// What the decide-then-record path reports to a session about one decision, in this
/// order: `decided`, then, when the relay must wait for the decision's audit record,
/// `recordWritten` or `recordFailed`; or `timedOut` alone.
public enum DecisionEvent: Hashable, Sendable {
    /// `recordPending`: the decision's audit record is being written and the relay must
    /// wait for it (`--audit-sync always`).
    case decided(Decision, recordPending: Bool)
    case recordWritten
    /// An allowed decision's record could not be written: nothing may be relayed for it.
    case recordFailed
    /// No decision within the deadline (an identd that holds it up).
    case timedOut
}

/// A session whose decisions go through the decide-then-record path.
public protocol DecidingSession {
    associatedtype Action
    mutating func decided(_ decision: Decision, recordPending: Bool) -> Action
    mutating func auditRecordWritten() -> Action
    mutating func auditRecordFailed() -> Action
    mutating func decisionTimedOut() -> Action
}

extension DecidingSession {
    /// Takes one report of the decide-then-record path.
    public mutating func received(_ event: DecisionEvent) -> Action {
        switch event {
        case .decided(let decision, let recordPending): decided(decision, recordPending: recordPending)
        case .recordWritten: auditRecordWritten()
        case .recordFailed: auditRecordFailed()
        case .timedOut: decisionTimedOut()
        }
    }
}



