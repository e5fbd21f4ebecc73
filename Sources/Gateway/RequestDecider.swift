import AccessPolicy
import AuditLog
import Logging
import NIOCore
import SOCKSSession
import SOCKSWire

/// The one decide-then-record path, for every decision a session makes: CONNECT's (one
/// per address tried), BIND's two, and each UDP destination's.
///
/// The policy decides on the event loop when no identd must be asked, else in a task,
/// under the decision deadline (`--negotiate-timeout`; see docs/architecture.md). Every
/// decision is logged at debug level and recorded in the audit log. An allowed request
/// goes on once its record is queued (the writer never drops one); with `--audit-sync
/// always`, whoever relays for it first waits for the record to be written and synced.
struct RequestDecider {
    enum Outcome {
        /// `recordWritten`: the write of an allowed decision's record, when the relay
        /// must wait for it; nil otherwise.
        case decided(Decision, recordWritten: EventLoopFuture<Void>?)
        /// No decision within the deadline: refused, and recorded as such.
        case timedOut
    }

    let gateway: GatewayContext
    let session: UInt64

    /// `step` names the decision in the audit record (nil: the request's own).
    /// `completion` runs on `eventLoop`, exactly once.
    func decide(
        _ facts: RequestFacts, step: String?, on eventLoop: any EventLoop, completion: @escaping (Outcome) -> Void
    ) {
        if let decision = gateway.policy.decideImmediately(facts) {
            completion(record(decision, facts, step: step, on: eventLoop))
            return
        }
        let policy = gateway.policy
        let pending = PendingDecision(completion)
        let deadline = gateway.configuration.negotiationTimeout
        let timer = eventLoop.assumeIsolated().scheduleTask(in: deadline) {
            guard pending.take() != nil else { return }
            self.recordTimeout(facts, step: step, after: deadline)
            completion(.timedOut)
        }
        eventLoop.makeFutureWithTask { await policy.decide(facts) }.assumeIsolated().whenComplete { result in
            timer.cancel()
            guard let completion = pending.take() else { return }
            switch result {
            case .success(let decision): completion(self.record(decision, facts, step: step, on: eventLoop))
            case .failure: completion(.timedOut)
            }
        }
    }

    private func record(_ decision: Decision, _ facts: RequestFacts, step: String?, on eventLoop: any EventLoop) -> Outcome {
        log(decision, facts, step: step)
        guard let audit = gateway.audit else { return .decided(decision, recordWritten: nil) }
        guard decision.verdict == .allow, audit.relayWaitsForWrite else {
            audit.recordDecision(facts, decision, session: session, step: step)
            return .decided(decision, recordWritten: nil)
        }
        let written = eventLoop.makePromise(of: Void.self)
        audit.recordDecision(facts, decision, session: session, step: step, written: written)
        return .decided(decision, recordWritten: written.futureResult)
    }

    /// The deadline passed: a decision record says so (deny, general failure), with
    /// every fact the engine had, so the auditor sees the request and why it failed.
    private func recordTimeout(_ facts: RequestFacts, step: String?, after deadline: TimeAmount) {
        let reason = "decision timed out after \(deadline) (identd did not answer in time)"
        gateway.logger.notice(
            "request refused: \(reason)", metadata: ["client": "\(facts.client)", "destination": "\(facts.destination)"])
        guard let audit = gateway.audit else { return }
        var record = AuditRecord.decision(
            facts, Decision(verdict: .deny, refusal: nil, rule: nil, trace: []), session: session, step: step)
        record.reply = Int(SOCKSServerMessage.failed(.generalFailure, version: SOCKSVersion(facts.version)).replyCode ?? 0)
        record.reason = step.map { "\($0): \(reason)" } ?? reason
        audit.record(record)
    }

    private func log(_ decision: Decision, _ facts: RequestFacts, step: String?) {
        guard gateway.logger.logLevel <= .debug else { return }
        gateway.logger.debug(
            "\(step ?? "decision")",
            metadata: [
                "client": "\(facts.client)",
                "command": "\(facts.command.rawValue)",
                "destination": "\(facts.destination):\(facts.destinationPort)",
                "address": "\(facts.destinationAddress.map(\.description) ?? "unresolved")",
                "verdict": "\(decision.verdict.rawValue)",
                "rule": "\(decision.rule?.description ?? "final deny")",
                "ident": "\(decision.ident.map(\.description) ?? "not asked")",
            ]
        )
    }
}

/// A decision in a task races its deadline; whichever comes first takes the completion.
/// Both run on the same event loop.
private final class PendingDecision {
    private var completion: ((RequestDecider.Outcome) -> Void)?

    init(_ completion: @escaping (RequestDecider.Outcome) -> Void) {
        self.completion = completion
    }

    func take() -> ((RequestDecider.Outcome) -> Void)? {
        defer { completion = nil }
        return completion
    }
}
