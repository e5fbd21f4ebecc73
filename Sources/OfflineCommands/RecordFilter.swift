import AccessPolicy
import ArgumentParser
import AuditLog
import Foundation
import NetAddress

/// The filters of `show`, applied to decision records.
struct RecordFilter: ParsableArguments {
    @Option(help: "Claimed user or identd user-id.")
    var user: String?

    @Option(help: ArgumentHelp("Client network, e.g. 10.0.0.0/8.", valueName: "cidr"))
    var from: String?

    @Option(help: ArgumentHelp("Destination: a host name, .domain, or a network.", valueName: "host|cidr"))
    var to: String?

    @Option(help: "Destination port.")
    var port: UInt16?

    @Option(help: ArgumentHelp("The deciding rule: its line number or label.", valueName: "line|label"))
    var rule: String?

    @Option(help: "allow or deny.")
    var verdict: String?

    @Option(help: "The reply code (90-93 for SOCKS4, 0-8 for SOCKS5).")
    var reply: Int?

    @Option(help: ArgumentHelp("From this time on (UTC, a prefix of 2026-11-29T13:05:00).", valueName: "time"))
    var since: String?

    @Option(help: ArgumentHelp("Before this time (UTC, a prefix of 2026-11-29T13:05:00).", valueName: "time"))
    var until: String?

    /// The filters given, as the command line said them (for the report's heading).
    var summary: String {
        let given: [(String, String?)] = [
            ("--user", user), ("--from", from), ("--to", to), ("--port", port.map(String.init)), ("--rule", rule),
            ("--verdict", verdict), ("--reply", reply.map(String.init)), ("--since", since), ("--until", until),
        ]
        return given.compactMap { name, value in value.map { "\(name) \($0)" } }.joined(separator: " ")
    }

    func matches(_ record: AuditRecord) throws -> Bool {
        guard record.event == .decision else { return false }
        if let user, record.claimedUser != user, record.ident?.userID != user { return false }
        if let from {
            guard let network = IPNetwork(from) else { throw ValidationError("--from: '\(from)' is not a network") }
            guard let client = record.client.flatMap(IPEndpoint.init), network.contains(client.address) else { return false }
        }
        if let to {
            if let network = IPNetwork(to) {
                let address = (record.resolved ?? record.destination).flatMap(IPAddress.init)
                guard let address, network.contains(address) else { return false }
            } else {
                let name = (record.destination ?? "").lowercased()
                let wanted = to.lowercased()
                let matched = wanted.hasPrefix(".") ? (name.hasSuffix(wanted) || "." + name == wanted) : name == wanted
                guard matched else { return false }
            }
        }
        if let port, record.destinationPort != port { return false }
        if let rule {
            guard record.ruleLine.map(String.init) == rule || record.ruleLabel == rule else { return false }
        }
        if let verdict, record.verdict != verdict { return false }
        if let reply, record.reply != reply { return false }
        if let since, record.time < since { return false }
        if let until, record.time >= until { return false }
        return true
    }
}
