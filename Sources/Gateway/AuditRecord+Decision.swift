import AccessPolicy
import AuditLog
import SOCKSSession

extension AuditRecord {
    /// A decision record with the reply the decision means in the request's SOCKS version
    /// (the record itself is built in AuditLog, beside its reading back).
    static func decision(
        _ facts: RequestFacts, _ decision: Decision, session: UInt64, step: String? = nil, httpRequest: HTTPRequestLine? = nil
    ) -> AuditRecord {
        AuditRecord.decision(
            facts, decision, reply: decision.replyCode(for: facts.version), session: session, step: step, httpRequest: httpRequest)
    }
}
