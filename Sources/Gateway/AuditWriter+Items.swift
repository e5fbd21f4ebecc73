import AccessPolicy
import AuditLog

/// What the writer is given and how it is set up: the items the event loops hand over,
/// the sync policy, and the error when the log cannot be opened.
extension AuditWriter {
    public enum SyncPolicy: String, Sendable, CaseIterable {
        /// fsync after every batch, before the next is taken.
        case always
        /// fsync at most once a second (and at shutdown): the default.
        case batch
        /// Leave it to the kernel (fsync only at shutdown).
        case none
    }

    public struct OpenError: Error, CustomStringConvertible {
        public var description: String
    }

    /// What an event loop hands over: a finished record, or a decision's facts, turned
    /// into a record on the writer thread so that the event loops do less per request.
    public enum Item: Sendable {
        case record(AuditRecord)
        case decision(RequestFacts, Decision, session: UInt64, step: String?, httpRequest: HTTPRequestLine?)

        /// The record, with `time` (when it was queued) unless it has a time of its own.
        func record(queuedAt time: String) -> AuditRecord {
            switch self {
            case .record(var record):
                if record.time.isEmpty { record.time = time }
                return record
            case .decision(let facts, let decision, let session, let step, let httpRequest):
                var record = AuditRecord.decision(facts, decision, session: session, step: step, httpRequest: httpRequest)
                record.time = time
                return record
            }
        }
    }
}
