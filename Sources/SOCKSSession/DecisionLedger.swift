/// What a session remembers about its decisions, the same for CONNECT and BIND: whether
/// one allowed it (then its end is recorded too), and how many allowed decisions' audit
/// records are still being written (with `--audit-sync always` nothing is relayed
/// before they are).
public struct DecisionLedger: Hashable, Sendable {
    public private(set) var allowed = false
    public private(set) var recordsBeingWritten = 0

    public init() {}

    mutating func allowed(recordPending: Bool) {
        allowed = true
        if recordPending { recordsBeingWritten += 1 }
    }

    /// One awaited record is written; true when none is left.
    mutating func recordWritten() -> Bool {
        recordsBeingWritten = max(0, recordsBeingWritten - 1)
        return recordsBeingWritten == 0
    }

    /// An allowed decision could not be logged: the request never happened, and its end
    /// is not recorded either.
    mutating func recordFailed() {
        allowed = false
        recordsBeingWritten = 0
    }
}
