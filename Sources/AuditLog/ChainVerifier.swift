import Foundation

/// Checks a chain line by line: every record's `prev` must be the SHA-256 of the line
/// before it, and `seq` must count up by one. An edited record breaks the link to the
/// next one; a deleted, inserted or reordered record breaks the link at its place. The
/// last record can only be checked against a hash kept elsewhere: `lastHash`.
public struct ChainVerifier: Sendable {
    public struct Broken: Error, Sendable, CustomStringConvertible {
        public var location: String
        public var description: String

        public init(location: String, description: String) {
            self.location = location
            self.description = description
        }
    }

    public private(set) var records = 0
    public private(set) var lastHash: String?
    private var lastSequence: UInt64?
    private var previousLocation = ""
    /// The `takeover` records seen (a seamless upgrade): their hash, sequence and place.
    /// A draining process's file branches from one of them.
    public private(set) var takeovers: [String: (sequence: UInt64, location: String)] = [:]

    public init() {}

    /// For a draining process's file (its first record is `chain-branch`): the chain goes
    /// on from the takeover record `hash` at `location`, as the successor's does.
    public init(branchingFrom hash: String, sequence: UInt64, location: String) {
        lastHash = hash
        lastSequence = sequence
        previousLocation = location
    }

    /// `location`: `FILE:LINE`, for the message. Reads only the chain's fields (a full
    /// JSON decode would cost ten times as much); the hash covers the rest.
    public mutating func check(_ line: Data, at location: String) throws(Broken) {
        guard let record = ChainFields(line) else {
            throw Broken(location: location, description: "\(location): not an audit record (the line was edited or cut)")
        }
        if let lastHash {
            guard record.prev == lastHash else {
                throw Broken(
                    location: location,
                    description: "\(location): broken link: this record does not follow the one at \(previousLocation) "
                        + "(that record was edited, or records were deleted, inserted or reordered between them)")
            }
            guard record.seq == (lastSequence ?? 0) &+ 1 else {
                throw Broken(
                    location: location,
                    description:
                        "\(location): sequence \(record.seq) after \(lastSequence ?? 0): records are missing or reordered")
            }
        } else if record.event == .chainStart {
            guard record.prev == record.seed, record.seq == 0 else {
                throw Broken(location: location, description: "\(location): the chain start does not carry its seed")
            }
        }
        // A first record that continues a chain (a rotated file read alone) is taken as
        // given: its predecessor is in the previous file.
        let hash = AuditChain.hash(line)
        if record.event == .takeover { takeovers[hash] = (record.seq, location) }
        lastHash = hash
        lastSequence = record.seq
        previousLocation = location
        records += 1
    }
}

/// The fields of a line that the chain is made of, found without decoding the rest.
/// In valid JSON a key's quotes are never escaped, so `"prev":"` can only be that key.
struct ChainFields {
    var prev: String
    var seq: UInt64
    var seed: String?
    var event: AuditRecord.Event?

    init?(_ line: Data) {
        let bytes = [UInt8](line)
        guard bytes.first == UInt8(ascii: "{"), bytes.last == UInt8(ascii: "}"),
            let prev = Self.string(after: "\"prev\":\"", in: bytes),
            let seq = Self.number(after: "\"seq\":", in: bytes)
        else { return nil }
        self.prev = prev
        self.seq = seq
        self.seed = Self.string(after: "\"seed\":\"", in: bytes)
        self.event = Self.string(after: "\"event\":\"", in: bytes).flatMap(AuditRecord.Event.init(rawValue:))
    }

    private static func position(of key: String, in bytes: [UInt8]) -> Int? {
        let pattern = Array(key.utf8)
        guard bytes.count >= pattern.count else { return nil }
        var index = 0
        while index <= bytes.count - pattern.count {
            if bytes[index] == pattern[0], Array(bytes[index..<(index + pattern.count)]) == pattern {
                return index + pattern.count
            }
            index += 1
        }
        return nil
    }

    private static func string(after key: String, in bytes: [UInt8]) -> String? {
        guard let start = position(of: key, in: bytes), let end = bytes[start...].firstIndex(of: UInt8(ascii: "\"")) else {
            return nil
        }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    private static func number(after key: String, in bytes: [UInt8]) -> UInt64? {
        guard let start = position(of: key, in: bytes) else { return nil }
        let digits = bytes[start...].prefix { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
        return UInt64(String(decoding: digits, as: UTF8.self))
    }
}
