import AccessPolicy
import NetAddress

/// A decision record and the request facts it holds, both ways, in one place: what the
/// gateway writes (`decision(_:_:reply:session:step:)`) is what `audit replay` reads back
/// (`requestFacts`), and a round-trip test holds the two together.
extension AuditRecord {
    /// A decision with every fact the engine used, so `audit replay` can decide it again.
    /// `reply` is the SOCKS reply code the decision meant for the client.
    /// `httpRequest`: an HTTP proxy request's method and, for a forwarded one, its target.
    public static func decision(
        _ facts: RequestFacts, _ decision: Decision, reply: Int, session: UInt64, step: String? = nil,
        httpRequest: HTTPRequestLine? = nil
    ) -> AuditRecord {
        var record = AuditRecord(event: .decision)
        record.httpMethod = httpRequest?.method
        record.httpTarget = httpRequest?.target.map(HTTPRequestLine.recorded)
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
        record.passwordSource = facts.passwordSource?.rawValue
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
        if let consulted = decision.groupsConsulted {
            record.groupsUser = consulted.user
            switch consulted.answer {
            case .member(let groups): record.groups = groups.sorted()
            case .noSuchUser: record.groupsNote = "no such user"
            case .unavailable(let why): record.groupsNote = "unavailable: " + why
            }
        }
        record.ruleLine = decision.rule?.line
        record.ruleLabel = decision.rule?.label
        record.route = decision.route?.map(\.description)
        record.limitLine = decision.limit?.line
        record.limitLabel = decision.limit?.label
        record.verdict = decision.verdict.rawValue
        record.reply = reply
        record.policySHA256 = decision.policySHA256
        let reason = [step, decision.refusal?.reason].compactMap { $0 }.joined(separator: ": ")
        record.reason = reason.isEmpty ? nil : reason
        return record
    }
}

extension AuditRecord {
    /// The facts the policy decided on, rebuilt from a decision record; nil for other
    /// records or if a field is missing.
    public var requestFacts: RequestFacts? {
        guard event == .decision, let socks, let version = RequestFacts.Version(rawValue: socks),
            let command, let command = RequestFacts.Command(rawValue: command),
            let client = client.flatMap(IPEndpoint.init), let listener = listener.flatMap(IPEndpoint.init),
            let destination, let destinationPort, let auth, let authMethod = RequestFacts.AuthMethod(rawValue: auth)
        else { return nil }
        let target: RequestFacts.Destination = IPAddress(destination).map { .address($0) } ?? .hostName(destination)
        var facts = RequestFacts(
            version: version, command: command, client: client, listener: listener, destination: target,
            destinationPort: destinationPort, resolvedAddress: resolved.flatMap(IPAddress.init), claimedUser: claimedUser,
            authMethod: authMethod, time: requestTime,
            gssapi: gssMechanism.map {
                RequestFacts.GSSAPISecurity(
                    mechanism: $0, protection: protection.flatMap(MessageProtection.init(rawValue:)) ?? .none)
            })
        facts.balancer = balancer.flatMap(IPEndpoint.init)
        facts.passwordSource = passwordSource.flatMap(RequestFacts.PasswordSource.init(rawValue:))
        return facts
    }
}

extension AuditRecord {
    /// The directory's answer a decision recorded, for `audit replay`; nil if none was asked.
    public var groupAnswer: GroupAnswer? {
        guard groupsUser != nil else { return nil }
        if let groups { return .member(of: Set(groups)) }
        if groupsNote == "no such user" { return .noSuchUser }
        return .unavailable(groupsNote.map { String($0.dropFirst("unavailable: ".count)) } ?? "not recorded")
    }
}

/// An HTTP proxy request's method and target, as the decision record keeps them.
public struct HTTPRequestLine: Hashable, Sendable {
    public var method: String
    /// The request-target of a forwarded request (nil for CONNECT: its destination says it).
    public var target: String?

    /// A target is kept up to this many bytes in the record.
    public static let maximumTargetLength = 2048

    public init(method: String, target: String?) {
        self.method = method
        self.target = target
    }

    /// `target`, cut at a character boundary to at most `maximumTargetLength` bytes, with "…".
    public static func recorded(_ target: String) -> String {
        guard target.utf8.count > maximumTargetLength else { return target }
        var cut = Substring(target)
        while cut.utf8.count > maximumTargetLength - 3 { cut = cut.dropLast() }
        return cut + "…"
    }
}
