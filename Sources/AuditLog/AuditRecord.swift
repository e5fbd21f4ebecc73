import AccessPolicy
import Crypto
import Foundation
import NetAddress

#if canImport(Glibc)
    import Glibc
#endif

/// One line of the audit log (schema version 1, docs/audit-log.md). Every event has the
/// common fields; the rest depend on `event`. Optional fields are left out when absent.
public struct AuditRecord: Codable, Sendable, Equatable {
    public static let schemaVersion = 1

    public enum Event: String, Codable, Sendable, CaseIterable {
        case chainStart = "chain-start"
        case chainContinue = "chain-continue"
        /// The first record of a draining process's own file: the chain goes on from the
        /// `takeover` record its `prev` names, beside the successor's (docs/audit-log.md).
        case chainBranch = "chain-branch"
        /// A successor took the listeners over; this process's later records (its
        /// draining sessions) are in the file `reason` names.
        case takeover
        /// Someone asked for the listeners who may not have them (`reason` says who).
        case takeoverRefused = "takeover-refused"
        case gatewayStart = "gateway-start"
        case gatewayStop = "gateway-stop"
        case privileges
        case policyLoad = "policy-load"
        case policyReload = "policy-reload"
        case policyReloadRejected = "policy-reload-rejected"
        case decision
        case sessionEnd = "session-end"
        /// The log could not be written for a while; requests were refused meanwhile.
        case auditGap = "audit-gap"
        /// A signature over the chain so far (`--audit-signing-key`).
        case checkpoint
    }

    // Common to every record.
    public var v: Int = AuditRecord.schemaVersion
    /// Which gateway of a fleet wrote the record (`--instance`, default the host name);
    /// each instance's log is a hash chain of its own.
    public var instance: String?
    public var seq: UInt64 = 0
    /// ISO 8601, UTC, milliseconds.
    public var time: String = ""
    public var event: Event
    /// SHA-256 (hex) of the previous line's bytes; for `chain-start`, the seed.
    public var prev: String = ""

    // chain-start, chain-continue
    public var seed: String?
    public var previousFile: String?

    // gateway-start, policy-*
    public var version: String?
    public var listen: [String]?
    public var policyFile: String?
    public var policySHA256: String?
    public var rules: Int?
    public var tests: Int?
    public var reason: String?

    // privileges
    public var user: String?
    public var verified: String?

    // decision
    public var session: UInt64?
    public var client: String?
    public var listener: String?
    /// The load balancer the client came through (PROXY protocol): `client` and
    /// `listener` are then what its header said, and this is the connection's own peer.
    public var balancer: String?
    public var socks: String?
    public var command: String?
    public var destination: String?
    public var destinationPort: UInt16?
    public var resolved: String?
    public var claimedUser: String?
    public var auth: String?
    public var authOutcome: String?
    /// For `auth` gssapi: the mechanism (`krb5`) and the per-message protection granted
    /// (none, integrity, confidentiality); `claimedUser` is the principal.
    public var gssMechanism: String?
    public var protection: String?
    /// For an HTTP proxy request: its method (CONNECT, GET, …) and, for a forwarded one,
    /// the target as the client wrote it (cut to `maximumTargetLength` bytes, then "…").
    public var httpMethod: String?
    /// For `auth` password: `file` or `pam`, what checked it.
    public var passwordSource: String?
    /// A `group` condition's lookup: whose groups were asked (`groupsUser`), the groups
    /// the directory named, or why there were none (`groupsNote`: "no such user",
    /// "unavailable: …").
    public var groupsUser: String?
    public var groups: [String]?
    public var groupsNote: String?
    public var httpTarget: String?
    public var ident: IdentRecord?
    public var ruleLine: Int?
    public var ruleLabel: String?
    /// The limit that refused what the rule allowed.
    public var limitLine: Int?
    public var limitLabel: String?
    /// The allowing rule's parents (`via`), without passwords, in the order tried.
    public var route: [String]?
    public var verdict: String?
    public var reply: Int?
    /// The request time the policy saw (seconds since 1970), for replay.
    public var requestTime: Int64?

    // session-end
    /// The parent that carried the session (`via`), without its password, and which
    /// attempt of the route it was: `socks5h://gw2:1080 (attempt 2)`.
    public var parent: String?
    public var bytesFromClient: UInt64?
    public var bytesToClient: UInt64?
    public var durationMs: Int?

    // checkpoint
    /// Which key signed (the first 16 hex digits of its SHA-256).
    public var keyID: String?
    /// Ed25519, base64, over `AuditCheckpoint.message` (instance, seq, prev).
    public var signature: String?

    public init(event: Event) {
        self.event = event
    }

    /// What identd said, with everything needed to decide again.
    public struct IdentRecord: Codable, Sendable, Equatable {
        /// `user-id`, or an IdentFailure name (unreachable, timeout, no-user, …).
        public var outcome: String
        public var userID: String?
        public var opsys: String?
        public var raw: String?
        public var detail: String?
        public var durationMs: Int?

        public init(
            outcome: String, userID: String? = nil, opsys: String? = nil, raw: String? = nil, detail: String? = nil,
            durationMs: Int? = nil
        ) {
            self.outcome = outcome
            self.userID = userID
            self.opsys = opsys
            self.raw = raw
            self.detail = detail
            self.durationMs = durationMs
        }

        public var identOutcome: IdentOutcome {
            if outcome == "user-id", let userID { return .userID(userID) }
            return .failure(IdentFailure(rawValue: outcome) ?? .unknownError)
        }
    }
}

/// Encodes records as JSON lines and chains them: each line carries the SHA-256 of the
/// line before it. Not thread-safe: one writer owns one chain.
public struct AuditChain: Sendable {
    public private(set) var lastHash: String
    public private(set) var nextSequence: UInt64

    /// A new chain from a random seed.
    public init() {
        self.init(lastHash: Self.randomSeed(), nextSequence: 0)
    }

    /// Continues a chain (after a rotation or a restart that found the last hash).
    public init(lastHash: String, nextSequence: UInt64) {
        self.lastHash = lastHash
        self.nextSequence = nextSequence
    }

    public static func randomSeed() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }.withUnsafeBytes(hex)
    }

    /// The line (without its newline) for `record`, with `seq` and `prev` filled in.
    public mutating func line(for record: AuditRecord) throws -> Data {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(512)
        append(record, to: &bytes)
        bytes.removeLast()
        return Data(bytes)
    }

    /// Writes `record`'s line and its newline at the end of `buffer`, with `seq` and
    /// `prev` filled in: the writer encodes a whole batch into one buffer this way.
    public mutating func append(_ record: AuditRecord, to buffer: inout [UInt8]) {
        var record = record
        record.seq = nextSequence
        record.prev = lastHash
        let start = buffer.count
        record.writeJSON(to: &buffer)
        lastHash = buffer.withUnsafeBytes { Self.hash(UnsafeRawBufferPointer(rebasing: $0[start...])) }
        buffer.append(UInt8(ascii: "\n"))
        nextSequence += 1
    }

    /// SHA-256 of a line's bytes (a file's, or a slice of the writer's buffer), in hex.
    public static func hash(_ line: some DataProtocol) -> String {
        SHA256.hash(data: line).withUnsafeBytes(hex)
    }

    private static let digits = Array("0123456789abcdef".utf8)

    static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        String(unsafeUninitializedCapacity: bytes.count * 2) { text in
            for (index, byte) in bytes.enumerated() {
                text[2 * index] = digits[Int(byte >> 4)]
                text[2 * index + 1] = digits[Int(byte & 0x0f)]
            }
            return bytes.count * 2
        }
    }

    /// `2026-11-29T13:24:07.123Z`, from the clock directly (this runs for every record).
    public static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        return String(unsafeUninitializedCapacity: 24) { text in
            var position = 0
            func put(_ value: Int, digits count: Int, then separator: UInt8?) {
                var remaining = value
                for offset in stride(from: count - 1, through: 0, by: -1) {
                    text[position + offset] = UInt8(ascii: "0") + UInt8(remaining % 10)
                    remaining /= 10
                }
                position += count
                if let separator {
                    text[position] = separator
                    position += 1
                }
            }
            put(Int(parts.tm_year) + 1900, digits: 4, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mon) + 1, digits: 2, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mday), digits: 2, then: UInt8(ascii: "T"))
            put(Int(parts.tm_hour), digits: 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_min), digits: 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_sec), digits: 2, then: UInt8(ascii: "."))
            put(Int(now.tv_nsec / 1_000_000), digits: 3, then: UInt8(ascii: "Z"))
            return position
        }
    }
}
