/// Typed factories for every record that is not a decision (those are built from their
/// facts, AuditRecord+Facts.swift): each event's fields in one place, named, so a record
/// cannot be written with a field of another event or without one its readers need.
extension AuditRecord {
    /// A session's end: a relay that ended (bytes both ways, its duration), or an allowed
    /// request that ended before its relay (`reply`: what the client heard, if anything).
    public static func sessionEnd(
        session: UInt64, reason: String, bytesFromClient: UInt64 = 0, bytesToClient: UInt64 = 0, duration: Duration? = nil,
        reply: Int? = nil, parent: String? = nil
    ) -> AuditRecord {
        var record = AuditRecord(event: .sessionEnd)
        record.session = session
        record.reason = reason
        record.bytesFromClient = bytesFromClient
        record.bytesToClient = bytesToClient
        record.durationMs = duration.map { Int($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) }
        record.reply = reply
        record.parent = parent
        return record
    }

    /// A UDP association's end, with what it relayed and dropped (no byte counts: datagrams).
    public static func udpAssociationEnd(session: UInt64, reason: String) -> AuditRecord {
        var record = AuditRecord(event: .sessionEnd)
        record.session = session
        record.reason = reason
        return record
    }

    /// The privileges the gateway serves with, as verified after the drop.
    public static func privileges(user: String, verified: String) -> AuditRecord {
        var record = AuditRecord(event: .privileges)
        record.user = user
        record.verified = verified
        return record
    }

    public static func policyLoad(file: String, sha256: String, rules: Int, testsPassed: Int) -> AuditRecord {
        var record = AuditRecord(event: .policyLoad)
        record.policyFile = file
        record.policySHA256 = sha256
        record.rules = rules
        record.tests = testsPassed
        return record
    }

    public static func policyReload(file: String, sha256: String, rules: Int, testsPassed: Int) -> AuditRecord {
        var record = policyLoad(file: file, sha256: sha256, rules: rules, testsPassed: testsPassed)
        record.event = .policyReload
        return record
    }

    /// A policy not taken (at the start, or on reload: the previous one stays in force).
    public static func policyReloadRejected(file: String, reason: String) -> AuditRecord {
        var record = AuditRecord(event: .policyReloadRejected)
        record.policyFile = file
        record.reason = reason
        return record
    }

    public static func gatewayStart(version: String, listen: [String], policyFile: String, policySHA256: String) -> AuditRecord {
        var record = AuditRecord(event: .gatewayStart)
        record.version = version
        record.listen = listen
        record.policyFile = policyFile
        record.policySHA256 = policySHA256
        return record
    }

    /// Stopping, and why (the signal).
    public static func gatewayStop(reason: String) -> AuditRecord {
        var record = AuditRecord(event: .gatewayStop)
        record.reason = reason
        return record
    }

    /// The first record of a file: a new chain from `seed`, or the chain going on from
    /// `previousFile` (a restart, or a reopen after rotation).
    public static func chainStart(seed: String) -> AuditRecord {
        var record = AuditRecord(event: .chainStart)
        record.seed = seed
        return record
    }

    public static func chainContinue(previousFile: String, time: String? = nil) -> AuditRecord {
        var record = AuditRecord(event: .chainContinue)
        record.previousFile = previousFile
        if let time { record.time = time }
        return record
    }

    /// The last record a process writes to the shared file when a successor takes its
    /// listeners over: both go on from it, the successor in this file, this process in
    /// `drainFile` (which starts with `chainBranch`).
    public static func takeover(successor: String, drainFile: String) -> AuditRecord {
        var record = AuditRecord(event: .takeover)
        record.reason = "taken over by \(successor); the sessions still running here are recorded in \(drainFile)"
        return record
    }

    /// A request for the listeners that was refused: who asked (pid, uid), and why not.
    public static func takeoverRefused(peer: String, reason: String) -> AuditRecord {
        var record = AuditRecord(event: .takeoverRefused)
        record.reason = "takeover asked by \(peer) refused: \(reason)"
        return record
    }

    /// The first record of a draining process's file: its chain goes on from the
    /// `takeover` record in `previousFile`.
    public static func chainBranch(previousFile: String, time: String? = nil) -> AuditRecord {
        var record = AuditRecord(event: .chainBranch)
        record.previousFile = previousFile
        if let time { record.time = time }
        return record
    }

    /// Written first once the log can be written again: when the gap began, and that
    /// requests were refused meanwhile.
    public static func auditGap(reason: String, time: String) -> AuditRecord {
        var record = AuditRecord(event: .auditGap)
        record.time = time
        record.reason = "\(reason), since \(time); new requests were refused meanwhile"
        return record
    }
}
