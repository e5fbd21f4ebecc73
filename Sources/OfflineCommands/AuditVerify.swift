import AccessPolicy
import ArgumentParser
import AuditLog
import CommandSupport
import Foundation
import NetAddress
import PrintableText

struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the hash chain; report the first broken link with its line.",
        discussion: """
            Every record carries the SHA-256 of the one before it, so an edited, deleted, \
            inserted or reordered record breaks the chain where it stands. Records cut from \
            the end leave no broken link: keep the printed last hash elsewhere and pass it \
            with --last to detect that.
            """
    )

    @Argument(help: "The log files, oldest first.")
    var files: [String]

    @Option(help: ArgumentHelp("The last hash printed by an earlier verify (or kept elsewhere).", valueName: "sha256"))
    var last: String?

    @Option(
        help: ArgumentHelp(
            "The public key of --audit-signing-key (audit keygen): check every checkpoint's signature.", valueName: "file"))
    var publicKey: String?

    func run() throws {
        let groups: [(instance: String, paths: [String])]
        do {
            groups = try AuditFiles(paths: files).byInstance()
        } catch {
            throw FailedStart(message: "\(error)")
        }
        if last != nil, groups.count > 1 {
            throw ValidationError("--last names one chain's end; these files hold \(groups.count) instances: verify each on its own")
        }
        let key: AuditVerifyingKey?
        do {
            key = try publicKey.map(AuditVerifyingKey.init(contentsOfFile:))
        } catch {
            throw FailedStart(message: "\(error)")
        }
        var broken = false
        for group in groups {
            // Each instance's files are a chain of their own.
            let name = groups.count > 1 ? "instance \(DisplayText.escaped(group.instance.isEmpty ? "(unnamed)" : group.instance)): " : ""
            var verifier = ChainVerifier()
            var checkpoints = key.map(CheckpointVerifier.init)
            var branchRecords = 0
            do {
                let (shared, branches) = try AuditFiles(paths: group.paths).splitBranches()
                try AuditFiles(paths: shared).forEachLine { line, file, number in
                    try verifier.check(line, at: "\(file):\(number)")
                    try checkpoints?.check(line, at: "\(file):\(number)")
                    return true
                }
                // Each draining process's file hangs from a takeover record in the shared files.
                for branch in branches {
                    branchRecords += try Self.verifyBranch(branch, takeovers: verifier.takeovers, key: key)
                }
                if !branches.isEmpty {
                    print("\(name)\(branches.count) files of draining processes, \(branchRecords) records, each chained to its takeover record")
                }
            } catch let failure as ChainVerifier.Broken {
                print(name + failure.description)
                broken = true
                continue
            } catch {
                throw FailedStart(message: "\(error)")
            }
            if let last, let lastHash = verifier.lastHash, !lastHash.hasPrefix(last.lowercased()) {
                print("the chain is intact but ends at \(lastHash), not at \(last): records were cut from the end, or added")
                throw ExitCode(1)
            }
            print("\(name)\(verifier.records) records, chain intact")
            print("\(name.isEmpty ? "" : "  ")last hash: \(verifier.lastHash ?? "-")")
            if let checkpoints {
                let indent = name.isEmpty ? "" : "  "
                if let place = checkpoints.lastVerified {
                    print("\(indent)\(checkpoints.verified) checkpoints verified with key \(checkpoints.key.keyID); the last at \(place)")
                } else {
                    print("\(indent)no checkpoint signed by key \(checkpoints.key.keyID): nothing is proven beyond the chain itself")
                }
                if checkpoints.uncovered > 0 {
                    print(
                        "\(indent)\(checkpoints.uncovered) records after it are not covered by a signature "
                            + "(a rewritten or cut tail there cannot be told from the real one)"
                            + (checkpoints.uncovered > AuditCheckpoint.every ? "; more than a checkpoint's worth: checkpoints are missing" : ""))
                }
            }
        }
        print("(keep the last hash elsewhere: records cut from the end can only be detected against it)")
        if broken { throw ExitCode(1) }
    }

    /// A draining process's file: its first record must follow a takeover record of the
    /// shared files, and the rest must follow it. Returns its record count.
    static func verifyBranch(
        _ path: String, takeovers: [String: (sequence: UInt64, location: String)], key: AuditVerifyingKey?
    ) throws -> Int {
        var verifier: ChainVerifier?
        var checkpoints = key.map(CheckpointVerifier.init)
        try AuditFiles(paths: [path]).forEachLine { line, file, number in
            if verifier == nil {
                let prev = AuditRecord(jsonLine: line)?.prev ?? ""
                guard let takeover = takeovers[prev] else {
                    throw ChainVerifier.Broken(
                        location: "\(file):\(number)",
                        description: "\(file):\(number): this draining process's file does not follow a takeover record "
                            + "of the files given (give the shared log files too, or the takeover record was edited)")
                }
                verifier = ChainVerifier(branchingFrom: prev, sequence: takeover.sequence, location: takeover.location)
            }
            try verifier?.check(line, at: "\(file):\(number)")
            try checkpoints?.check(line, at: "\(file):\(number)")
            return true
        }
        return verifier?.records ?? 0
    }
}
