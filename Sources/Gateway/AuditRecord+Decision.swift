import AccessPolicy
import AuditLog
import SOCKSSession

extension AuditRecord {
    /// A decision with every fact the engine used, so `audit replay` can decide it again.
    static func decision(_ facts: RequestFacts, _ decision: Decision, session: UInt64, step: String? = nil) -> AuditRecord {
        var record = AuditRecord(event: .decision)
        record.session = session
        record.client = facts.client.description
        record.listener = facts.listener.description
        record.balancer = facts.balancer?.description
        record.socks = facts.version.rawValue
        record.command = facts.command.rawValue
        record.destination = facts.destination.description
        record.destinationPort = facts.destinationPort
        if case .hostName = facts.destination { record.resolved = facts.resolvedAddress?.description }
        record.claimedUser = facts.claimedUser
        record.auth = facts.authMethod.rawValue
        record.authOutcome = facts.authMethod == .none ? "none" : "verified"
        record.gssMechanism = facts.gssapi?.mechanism
        record.protection = facts.gssapi?.protection.rawValue
        record.requestTime = facts.time
        if let answer = decision.identAnswer {
            var ident = IdentRecord(
                outcome: "user-id", raw: answer.rawReply, detail: answer.detail, durationMs: answer.durationMs)
            switch answer.outcome {
            case .userID(let user): ident.userID = user
            case .failure(let failure): ident.outcome = failure.rawValue
            }
            ident.opsys = answer.opsys
            record.ident = ident
        }
        record.ruleLine = decision.rule?.line
        record.ruleLabel = decision.rule?.label
        record.route = decision.route?.map(\.description)
        record.limitLine = decision.limit?.line
        record.limitLabel = decision.limit?.label
        record.verdict = decision.verdict.rawValue
        record.reply = Int(decision.replyCode(for: facts.version))
        record.policySHA256 = decision.policySHA256
        record.reason = [step, decision.refusal?.reason].compactMap { $0 }.joined(separator: ": ").nilIfEmpty
        return record
    }
}

extension String {
    fileprivate var nilIfEmpty: String? { isEmpty ? nil : self }
}
