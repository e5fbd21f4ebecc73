import ArgumentParser
import CBuildInfo
import Probe
import OfflineCommands

/// The root command; `main.swift` dispatches to the subcommands.
struct Identgate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identgate",
        abstract: "An ident-aware SOCKS 4, 4a and 5 access-control gateway.",
        version: "\(version) (commit \(commit))",
        subcommands: [Run.self, Check.self, TestCommand.self, Explain.self, DiffCommand.self, FmtCommand.self, ImportCommand.self, Audit.self, Passwd.self, Probe.self, Upgrade.self],
        defaultSubcommand: nil
    )
}

extension Identgate {
    /// The release, and the commit it was built from (Package.swift's `buildCommit`).
    static let version = "0.1.0"
    static let commit = String(cString: identgate_build_commit())
}
