import AccessPolicy
import ArgumentParser
import AuditLog
import CommandSupport
import Foundation
import NetAddress

struct AuditKeygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make an Ed25519 key pair for signed checkpoints (run --audit-signing-key, verify --public-key).",
        discussion: """
            The private key file is created readable by its owner only (give it to root: the \
            gateway reads it before dropping privileges); the public one is for auditors. \
            Neither file is overwritten.
            """
    )

    @Option(help: ArgumentHelp("Where to write the private key.", valueName: "file"))
    var `private`: String

    @Option(help: ArgumentHelp("Where to write the public key.", valueName: "file"))
    var `public`: String

    func run() throws {
        let key = AuditSigningKey.generate()
        try Self.create(`private`, key.fileText, mode: 0o600)
        try Self.create(`public`, key.verifyingKey.fileText, mode: 0o644)
        print("key \(key.verifyingKey.keyID): private \(`private`), public \(`public`)")
    }

    /// A new file with `mode` from the start (never a moment with wider permissions).
    static func create(_ path: String, _ text: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard descriptor >= 0 else {
            throw FailedStart(message: "\(path): cannot create: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        guard write(descriptor, bytes, bytes.count) == bytes.count else {
            throw FailedStart(message: "\(path): cannot write: \(String(cString: strerror(errno)))")
        }
    }
}
