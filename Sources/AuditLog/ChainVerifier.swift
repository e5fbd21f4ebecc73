import Foundation

/// Checks a chain line by line: every record's `prev` must be the SHA-256 of the line
/// before it, and `seq` must count up by one. An edited record breaks the link to the
/// next one; a deleted, inserted or reordered record breaks the link at its place. The
/// last record can only be checked against a hash kept elsewhere: `lastHash`.
public struct ChainVerifier: Sendable {
    public struct Broken: Error, Sendable, CustomStringConvertible {
        public var location: String
        public var description: String
    }

    public private(set) var records = 0
    public private(set) var lastHash: String?
    private var lastSequence: UInt64?
    private var previousLocation = ""
    private let decoder = JSONDecoder()

    public init() {}

    /// `location`: `FILE:LINE`, for the message.
    public mutating func check(_ line: Data, at location: String) throws(Broken) {
        guard let record = try? decoder.decode(AuditRecord.self, from: line) else {
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
        lastHash = AuditChain.hash(line)
        lastSequence = record.seq
        previousLocation = location
        records += 1
    }
}
