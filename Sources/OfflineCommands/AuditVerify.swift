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
            do {
                try AuditFiles(paths: group.paths).forEachLine { line, file, number in
                    try verifier.check(line, at: "\(file):\(number)")
                    try checkpoints?.check(line, at: "\(file):\(number)")
                    return true
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
}
