import Crypto
import Foundation

/// The Ed25519 key that signs checkpoints (`--audit-signing-key`; `audit keygen`). The
/// hash chain alone can be recomputed by whoever can write the log; a checkpoint signs
/// the chain's hash at its place, so a rewritten history before it no longer verifies.
public struct AuditSigningKey: Sendable {
    // The raw 32 bytes: swift-crypto's key types are not Sendable; a key is made from
    // them per signature (one per thousand records).
    private let raw: Data
    public let verifyingKey: AuditVerifyingKey

    public static func generate() -> AuditSigningKey {
        AuditSigningKey(key: Curve25519.Signing.PrivateKey())
    }

    /// The key file: one line, `identgate-audit-ed25519-private BASE64`.
    public var fileText: String { "\(Self.tag) \(raw.base64EncodedString())\n" }

    static let tag = "identgate-audit-ed25519-private"

    public init(contentsOfFile path: String) throws {
        let raw = try AuditKeyFile.read(path, tag: Self.tag)
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw AuditKeyFile.Invalid(description: "\(path): not an Ed25519 private key")
        }
        self.init(key: key)
    }

    init(key: Curve25519.Signing.PrivateKey) {
        raw = key.rawRepresentation
        verifyingKey = AuditVerifyingKey(raw: key.publicKey.rawRepresentation)
    }

    func sign(_ message: Data) -> String {
        // The bytes were a valid key when read; an empty signature would only fail verify.
        let signature = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw).signature(for: message)
        return (signature ?? Data()).base64EncodedString()
    }
}

/// The public half, for `audit verify --public-key`.
public struct AuditVerifyingKey: Sendable {
    private let raw: Data

    /// The first 16 hex digits of the SHA-256 of the raw public key: which key signed.
    public var keyID: String {
        String(SHA256.hash(data: raw).withUnsafeBytes(AuditChain.hex).prefix(16))
    }

    public var fileText: String { "\(Self.tag) \(raw.base64EncodedString())\n" }

    static let tag = "identgate-audit-ed25519-public"

    public init(contentsOfFile path: String) throws {
        let raw = try AuditKeyFile.read(path, tag: Self.tag)
        guard (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil else {
            throw AuditKeyFile.Invalid(description: "\(path): not an Ed25519 public key")
        }
        self.raw = raw
    }

    init(raw: Data) {
        self.raw = raw
    }

    func isValid(_ signature: String, for message: Data) -> Bool {
        guard let bytes = Data(base64Encoded: signature), let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { return false }
        return key.isValidSignature(bytes, for: message)
    }
}

enum AuditKeyFile {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    static func read(_ path: String, tag: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Invalid(description: "\(path): cannot read the key file")
        }
        let fields = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace)
        guard fields.count == 2, fields[0] == tag, let raw = Data(base64Encoded: String(fields[1])) else {
            throw Invalid(description: "\(path): not a '\(tag)' key file (made by identgate audit keygen)")
        }
        return raw
    }
}

/// Checkpoint records: what is signed, how often, and making one in a chain.
public enum AuditCheckpoint {
    /// A checkpoint after this many records at most: bounds what a rewritten tail can
    /// hide to a thousand records, at one signature (about 50 µs) per thousand.
    public static let every = 1000
    /// And at most this long after the first record it does not cover: bounds the time
    /// during which a quiet gateway's last records are unsigned.
    public static let interval: Duration = .seconds(60)

    /// What a checkpoint signs: its instance, its own sequence number, and the hash of
    /// the line before it (which commits to every line before that).
    static func message(instance: String?, seq: UInt64, prev: String) -> Data {
        Data("identgate audit checkpoint v1\n\(instance ?? "")\n\(seq)\n\(prev)".utf8)
    }
}

extension AuditChain {
    /// Appends a checkpoint signing the chain so far (the next record's place).
    public mutating func appendCheckpoint(signedBy key: AuditSigningKey, instance: String?, time: String, to buffer: inout [UInt8]) {
        var record = AuditRecord(event: .checkpoint)
        record.time = time
        record.instance = instance
        record.keyID = key.verifyingKey.keyID
        record.signature = key.sign(AuditCheckpoint.message(instance: instance, seq: nextSequence, prev: lastHash))
        append(record, to: &buffer)
    }
}

/// `audit verify --public-key`: each checkpoint's signature, and how much of the log the
/// last good one covers.
public struct CheckpointVerifier: Sendable {
    public let key: AuditVerifyingKey
    public private(set) var verified = 0
    /// Where the last verified checkpoint is, and how many records came after it.
    public private(set) var lastVerified: String?
    public private(set) var uncovered = 0

    public init(key: AuditVerifyingKey) {
        self.key = key
    }

    /// Every record, in chain order; throws at a checkpoint that does not verify.
    public mutating func check(_ line: Data, at location: String) throws(ChainVerifier.Broken) {
        guard ChainFields(line)?.event == .checkpoint else {
            uncovered += 1
            return
        }
        guard let record = AuditRecord(jsonLine: line), let signature = record.signature else {
            throw ChainVerifier.Broken(location: location, description: "\(location): a checkpoint without a signature")
        }
        guard record.keyID == key.keyID else {
            throw ChainVerifier.Broken(
                location: location,
                description: "\(location): checkpoint signed by key \(record.keyID ?? "?"), not by the given key \(key.keyID)")
        }
        guard key.isValid(signature, for: AuditCheckpoint.message(instance: record.instance, seq: record.seq, prev: record.prev))
        else {
            throw ChainVerifier.Broken(
                location: location,
                description: "\(location): checkpoint signature does not verify: the records before it were rewritten, "
                    + "or the checkpoint was forged or moved from another log")
        }
        verified += 1
        lastVerified = location
        uncovered = 0
    }
}
