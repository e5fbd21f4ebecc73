import AccessPolicy
import ArgumentParser
import AuditLog
import Foundation
import NetAddress

public struct Audit: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Review the audit log: verify, show, summary, replay.",
        discussion: """
            Give files oldest first (rotated ones before the current one); .gz files are read as they are. \
            The logs of several gateways (a fleet: each record names its --instance) may be given together: \
            each instance's files are one chain, verified on their own; show, summary and replay merge the \
            instances in time order.
            """,
        subcommands: [AuditVerify.self, AuditShow.self, AuditSummary.self, AuditReplay.self, AuditReport.self, AuditKeygen.self]
    )
}
