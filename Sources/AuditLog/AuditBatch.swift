import Foundation

/// Where an existing audit log's chain goes on: the hash and number after its last line.
/// Read from the file's last MiB; a last line that is not a record (a torn write from a
/// crash, or another file) is an error, so nothing is appended to a log that would not
/// verify.
public enum AuditTail {
    public struct NotARecord: Error, CustomStringConvertible {
        public let path: String
        public var description: String {
            "\(path) ends in a line that is not an audit record: check it with 'identgate audit verify' and move it away"
        }
    }

    /// nil when there is no file or it is empty: a new chain starts.
    public static func chain(continuing path: String) throws -> AuditChain? {
        guard let last = try lastLine(of: path) else { return nil }
        guard let record = try? JSONDecoder().decode(AuditRecord.self, from: last) else { throw NotARecord(path: path) }
        return AuditChain(lastHash: AuditChain.hash(last), nextSequence: record.seq + 1)
    }

    static func lastLine(of path: String) throws -> Data? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        guard size > 0 else { return nil }
        let window = min(size, 1 << 20)
        try handle.seek(toOffset: size - window)
        guard var data = try handle.readToEnd() else { return nil }
        if data.last == UInt8(ascii: "\n") { data.removeLast() }
        if let newline = data.lastIndex(of: UInt8(ascii: "\n")) { data = data[(newline + 1)...] }
        return Data(data)
    }
}

/// The pure part of writing a batch: records in, the bytes of their lines out, chained,
/// with signed checkpoints every `AuditCheckpoint.every` records and when the oldest
/// uncovered one is `AuditCheckpoint.interval` old (or the log is closing). A value: the
/// writer keeps the one it last wrote, and a batch that could not be written is simply
/// encoded again from it.
public struct AuditBatchEncoder: Sendable {
    public var chain: AuditChain
    /// Records written since the last checkpoint, and since when.
    public private(set) var uncovered = 0
    public private(set) var uncoveredSince: ContinuousClock.Instant?
    let instance: String?
    let signingKey: AuditSigningKey?

    public init(chain: AuditChain, instance: String?, signingKey: AuditSigningKey?) {
        self.chain = chain
        self.instance = instance
        self.signingKey = signingKey
    }

    /// A checkpoint is due (records uncovered for the interval, or any at the close).
    public func checkpointDue(closing: Bool, now: ContinuousClock.Instant) -> Bool {
        guard signingKey != nil, uncovered > 0, let since = uncoveredSince else { return false }
        return closing || now - since >= AuditCheckpoint.interval
    }

    /// The lines of `records`, each stamped with this gateway's instance, and the
    /// checkpoints due among and after them.
    public mutating func encode(
        _ records: [AuditRecord], closing: Bool = false, now: ContinuousClock.Instant = .now, time: String = AuditChain.timestamp()
    ) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.count * 768)
        for var record in records {
            record.instance = instance
            chain.append(record, to: &bytes)
            guard let signingKey else { continue }
            uncovered += 1
            if uncoveredSince == nil { uncoveredSince = now }
            if uncovered >= AuditCheckpoint.every {
                chain.appendCheckpoint(signedBy: signingKey, instance: instance, time: time, to: &bytes)
                (uncovered, uncoveredSince) = (0, nil)
            }
        }
        if let signingKey, checkpointDue(closing: closing, now: now) {
            chain.appendCheckpoint(signedBy: signingKey, instance: instance, time: time, to: &bytes)
            (uncovered, uncoveredSince) = (0, nil)
        }
        return bytes
    }
}
