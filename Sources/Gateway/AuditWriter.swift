import AccessPolicy
import AuditLog
import Foundation
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Writes audit records on a thread of its own, so no event loop ever waits for the
/// disk. Records are queued, chained (each carries the SHA-256 of the line before it)
/// and written in batches; the file is synced by the chosen policy and at shutdown. The
/// queue itself has no hard bound and drops nothing: `capacity` is where, failing
/// closed, new requests start being refused. A record can carry a promise that is
/// fulfilled once its line is written: with `--audit-sync always` the gateway waits for
/// it before relaying, so nothing is relayed before its decision is on disk; with
/// `batch` or `none` a request goes on once its record is queued.
/// If a write fails the writer turns unhealthy: with `failClosed` the waiting requests
/// and new ones are refused (their decisions are taken out of the queue: those
/// requests never happen), everything else stays queued until writes succeed again.
public final class AuditWriter: Sendable {
    struct Entry {
        var item: Item
        var written: EventLoopPromise<Void>?
        /// When it was queued, read under the queue's lock, for a record without a time of
        /// its own: so the log's order is its time order (two event loops that read the
        /// clock first and took the lock after could queue their records in the other
        /// order, a millisecond apart, and `audit show` merges logs by time).
        var time = ""

        /// The time its record will carry, if known yet.
        var queuedTime: String? {
            if !time.isEmpty { return time }
            if case .record(let record) = item, !record.time.isEmpty { return record.time }
            return nil
        }

        init(record: AuditRecord, written: EventLoopPromise<Void>?) {
            self.item = .record(record)
            self.written = written
        }

        init(item: Item, written: EventLoopPromise<Void>?) {
            self.item = item
            self.written = written
        }
    }

    public struct NotWritten: Error, CustomStringConvertible {
        public var description: String
    }

    struct State {
        var queue: [Entry] = []
        /// Taken from the queue by the writer and not yet written: they still count
        /// against the capacity, and go back to the front of the queue if writing fails.
        var writing = 0
        var stopping = false
        var reopenRequested = false
        var healthy = true
        /// Requests refused since requests were last admitted (`admitRequest`).
        var refused = 0
        /// Failed write attempts since the start (metrics).
        var writeFailures = 0
        var failure: String?
        /// The chain as last written, and the records no checkpoint covers yet.
        var encoder: AuditBatchEncoder
        var descriptor: Int32
        var lastSync = ContinuousClock.now
        /// A successor's takeover: its chain waits for the predecessor's last hash
        /// (`continueChain`), and nothing is written until it comes.
        var chainPending = false
        /// Asked by `handOver`: the writer thread ends this file with a takeover record.
        var handover: Handover?
        /// After a handover: the draining process's own file (SIGUSR1 reopens it, not `path`).
        var drainPath: String?
    }

    /// With `always`, an allowed request's relay waits until its decision record is
    /// written and synced; otherwise it goes on once the record is queued (queued
    /// records are never dropped: they wait for the disk, and new requests are refused
    /// meanwhile).
    public var relayWaitsForWrite: Bool { sync == .always }

    /// The longest a record nobody waits for stays queued.
    static let idleRound = 0.05

    public let path: String
    public let instance: String?
    /// Signs a checkpoint every `AuditCheckpoint.every` records or `interval`, and at the end.
    private let signingKey: AuditSigningKey?
    public let sync: SyncPolicy
    public let failClosed: Bool
    /// Requests are refused (fail-closed) or records still taken (fail-open) beyond this.
    public let capacity: Int
    let state: NIOLockedValueBox<State>
    let wakeUp = ConditionLock(value: 0)
    private let finished = ConditionLock(value: 0)

    /// Opens (or creates) the file and continues its chain, or starts one. Call while
    /// still privileged; `start()` later, after the privilege drop, starts the thread.
    /// `instance`: the gateway's name in a fleet, written into every record.
    ///
    /// `afterTakeover`: this process takes over from a running one, which still writes
    /// `path`: the file is opened, but the chain waits for `continueChain` (or
    /// `startOwnChain`), and nothing is written before.
    public init(
        path: String, sync: SyncPolicy = .batch, failClosed: Bool = true, capacity: Int = 65536, instance: String? = nil,
        signingKey: AuditSigningKey? = nil, afterTakeover: Bool = false
    ) throws {
        self.instance = instance
        self.signingKey = signingKey
        self.path = path
        self.sync = sync
        self.failClosed = failClosed
        self.capacity = capacity
        // After a takeover the running gateway still writes the file: its last line may be
        // half written right now, so the tail is read only if it is needed (`startOwnChain`).
        let (descriptor, chain, continuing) = try Self.open(path, readingTail: !afterTakeover)
        state = NIOLockedValueBox(
            State(encoder: AuditBatchEncoder(chain: chain, instance: instance, signingKey: signingKey), descriptor: descriptor))
        if afterTakeover {
            state.withLockedValue { $0.chainPending = true }
        } else {
            enqueue(continuing ? .chainContinue(previousFile: path) : .chainStart(seed: chain.lastHash))
        }
    }

    /// stdout for `-`; else the file, appended to. An existing log's last line gives the
    /// hash and number the chain continues from.
    private static func open(_ path: String, readingTail: Bool = true) throws -> (Int32, AuditChain, Bool) {
        if path == "-" { return (STDOUT_FILENO, AuditChain(), false) }
        let continuing: AuditChain?
        do {
            continuing = readingTail ? try AuditTail.chain(continuing: path) : nil
        } catch let error as AuditTail.NotARecord {
            throw OpenError(description: error.description)
        }
        let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o640)
        guard descriptor >= 0 else {
            let reason = errno == ELOOP ? "it is a symbolic link; give the real path" : String(cString: strerror(errno))
            throw OpenError(description: "cannot open the audit log \(path): \(reason)")
        }
        return (descriptor, continuing ?? AuditChain(), continuing != nil)
    }

    public func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = "identgate-audit"
        thread.start()
    }

    /// True while records are being written (and the queue is below `capacity`); with
    /// fail-closed, new requests are refused otherwise.
    private func admits(_ state: State) -> Bool {
        !failClosed || (state.healthy && state.queue.count + state.writing < capacity)
    }

    public enum Admission: Equatable, Sendable {
        case admitted
        /// Admitted, after `refused` requests were refused: the episode is over.
        case admittedAgain(refused: Int)
        /// Refused; `first` for the first refusal of an episode (log it then, only then).
        case refused(first: Bool)
    }

    /// Whether a new request may be served (`admits`), counting refusals, so that an
    /// episode of refusals is logged once at its start and once at its end, not per
    /// request. One lock per request.
    public func admitRequest() -> Admission {
        state.withLockedValue { state in
            if admits(state) {
                guard state.refused > 0 else { return .admitted }
                defer { state.refused = 0 }
                return .admittedAgain(refused: state.refused)
            }
            state.refused += 1
            return .refused(first: state.refused == 1)
        }
    }

    /// The writer's state for the metrics endpoint and `/healthz`.
    public struct Health: Sendable {
        /// Records queued or being written.
        public var queued: Int
        /// Failed write attempts since the start.
        public var writeFailures: Int
        /// True while new requests are refused (fail-closed, and failing or too far behind).
        public var refusingRequests: Bool
        /// Why the log is failing, while it is.
        public var failure: String?
    }

    public var health: Health {
        state.withLockedValue { state in
            Health(
                queued: state.queue.count + state.writing, writeFailures: state.writeFailures, refusingRequests: !admits(state),
                failure: state.healthy ? nil : state.failure)
        }
    }

    /// Queues a record. `written`, if given, is succeeded once the line is written (or,
    /// with fail-open, once writing has failed), and failed if it cannot be written.
    public func record(_ record: consuming AuditRecord, written: EventLoopPromise<Void>? = nil) {
        enqueue(record, written: written)
    }

    /// Queues a decision; the writer thread makes the record.
    public func recordDecision(
        _ facts: RequestFacts, _ decision: Decision, session: UInt64, step: String?, httpRequest: HTTPRequestLine? = nil,
        written: EventLoopPromise<Void>? = nil
    ) {
        enqueue(
            item: .decision(facts, decision, session: session, step: step, httpRequest: httpRequest),
            written: written)
    }

    // Records and entries are moved, not copied, on their way into the queue: a copy of
    // a record retains every one of its strings (measured with callgrind: the copies were
    // a third of the direct driver's instructions per connection).
    func enqueue(_ record: consuming AuditRecord, written: EventLoopPromise<Void>? = nil) {
        enqueue(item: .record(record), written: written)
    }

    private func enqueue(item: consuming Item, written: EventLoopPromise<Void>?) {
        var entry = Optional(Entry(item: item, written: written))
        let queued = state.withLockedValue { state in
            if var entry = entry.take() {
                entry.time = AuditChain.timestamp()
                state.queue.append(entry)
            }
            return state.queue.count
        }
        // Someone waits for this record, or much is queued: write now. Otherwise the
        // writer's next round (at most `idleRound` away) takes it, which saves a wake-up
        // per record.
        if written != nil || queued >= 256 {
            wakeUp.lock()
            wakeUp.unlock(withValue: 1)
        }
    }

    /// Puts `record` at the head of the queue: a file's first record (after a reopen, at a
    /// takeover). The records behind it were queued before it, so without a time of its
    /// own it takes the earliest of theirs (else now): the file's order stays its time order.
    func enqueueFirst(_ record: AuditRecord) {
        state.withLockedValue { state in
            var entry = Entry(record: record, written: nil)
            entry.time = state.queue.first?.queuedTime ?? AuditChain.timestamp()
            state.queue.insert(entry, at: 0)
        }
    }

    /// SIGUSR1 (logrotate): close the file and open `path` anew; the chain continues.
    public func reopen() {
        state.withLockedValue { $0.reopenRequested = true }
        wakeUp.lock()
        wakeUp.unlock(withValue: 1)
    }

    /// Writes what is queued, syncs and closes. Blocks until done.
    public func shutdown() {
        state.withLockedValue { $0.stopping = true }
        wakeUp.lock()
        wakeUp.unlock(withValue: 1)
        finished.lock(whenValue: 1)
        finished.unlock()
    }

    private func run() {
        while true {
            // Wake when a record is waited for, or every round to write the rest, sync
            // and retry after a failure.
            if wakeUp.lock(whenValue: 1, timeoutSeconds: Self.idleRound) {
                wakeUp.unlock(withValue: 0)
            }
            let reopening = state.withLockedValue { state in
                defer { state.reopenRequested = false }
                return state.reopenRequested
            }
            // A successor's chain waits for the predecessor's end of the file.
            if state.withLockedValue({ $0.chainPending && !$0.stopping }) { continue }
            if let handover = state.withLockedValue({ $0.handover }) {
                endFileForSuccessor(handover)
                continue
            }
            // Reopen first, so the marker it queues is part of the batch taken next; with a
            // signing key, the old file first gets a checkpoint over all it holds.
            if reopening {
                if checkpointDue(stopping: true) { write([], closingCheckpoint: true) }
                reopenFile()
            }
            // Stopping before the predecessor said where its chain ends: this process never
            // served, and its records cannot be written without forking the chain.
            if state.withLockedValue({ $0.chainPending }) {
                discardPendingChain()
                finished.lock()
                finished.unlock(withValue: 1)
                return
            }
            // The batch is moved out of the queue, not copied: records are large.
            let (batch, stopping) = state.withLockedValue { state in
                defer {
                    state.writing = state.queue.count
                    state.queue = []
                }
                return (state.queue, state.stopping)
            }
            if !batch.isEmpty || checkpointDue(stopping: stopping) { write(batch, closingCheckpoint: stopping) }
            syncIfDue(force: stopping)
            if stopping, state.withLockedValue({ $0.queue.isEmpty || !$0.healthy }) {
                state.withLockedValue { state in
                    if state.descriptor != STDOUT_FILENO { close(state.descriptor) }
                }
                finished.lock()
                finished.unlock(withValue: 1)
                return
            }
        }
    }

    /// True when records are written that no checkpoint covers, and the interval since
    /// the first of them has passed (or the writer is stopping).
    func checkpointDue(stopping: Bool) -> Bool {
        state.withLockedValue { $0.encoder.checkpointDue(closing: stopping, now: .now) }
    }

    /// Encodes and writes the batch (taken from the queue); if it cannot be written, it
    /// goes back to the front of the queue. With a signing key, checkpoints go in after
    /// every `AuditCheckpoint.every` records, and at the end when one is due.
    func write(_ batch: [Entry], closingCheckpoint: Bool = false) {
        var encoder = state.withLockedValue { $0.encoder }
        let bytes = encoder.encode(batch.map { $0.item.record(queuedAt: $0.time) }, closing: closingCheckpoint)
        let descriptor = state.withLockedValue { $0.descriptor }
        // Where the batch starts, so a write cut short (a full disk) can be taken back:
        // the file then never holds a partial line.
        let sizeBefore = descriptor == STDOUT_FILENO ? -1 : lseek(descriptor, 0, SEEK_END)
        let written = bytes.withUnsafeBytes { raw -> Int in
            var offset = 0
            while offset < raw.count {
                let result = Glibc.write(descriptor, raw.baseAddress! + offset, raw.count - offset)
                if result < 0 {
                    if errno == EINTR { continue }
                    return -Int(errno)
                }
                offset += result
            }
            return offset
        }
        guard written == bytes.count else {
            if sizeBefore >= 0 { _ = ftruncate(descriptor, sizeBefore) }
            state.withLockedValue { state in
                state.queue.insert(contentsOf: batch, at: 0)
                state.writing = 0
            }
            fail("cannot write the audit log \(path): \(String(cString: strerror(Int32(-written))))", batch: batch)
            return
        }
        if sync == .always { fsync(descriptor) }
        for entry in batch { entry.written?.succeed(()) }  // written, and synced with `always`
        state.withLockedValue { state in
            state.encoder = encoder
            state.writing = 0
            if !state.healthy {
                state.healthy = true
                writeToStandardError("identgate: the audit log is writable again; accepting requests\n")
            }
        }
    }

    func fail(_ reason: String, batch: [Entry] = []) {
        let first = state.withLockedValue { state in
            defer {
                state.healthy = false
                state.failure = reason
                state.writeFailures += 1
            }
            if state.healthy {
                // Says in the log itself that it had a gap; as long as it is queued the
                // writer keeps trying, and its write is what makes the log healthy again.
                let gap = AuditRecord.auditGap(reason: reason, time: AuditChain.timestamp())
                state.queue.append(Entry(record: gap, written: nil))
            }
            return state.healthy
        }
        // Requests waiting for their decision to be written: refused (fail-closed), their
        // records dropped since they will not happen; or let through (fail-open).
        let waiting = batch.filter { $0.written != nil }
        if !waiting.isEmpty {
            for entry in waiting {
                if failClosed { entry.written?.fail(NotWritten(description: reason)) } else { entry.written?.succeed(()) }
            }
            state.withLockedValue { state in
                state.queue.removeAll { entry in
                    entry.written != nil && waiting.contains { $0.written?.futureResult === entry.written?.futureResult }
                }
            }
        }
        if first {
            writeToStandardError(
                "identgate: \(reason); "
                    + (failClosed
                        ? "refusing new requests until it can be written\n" : "going on without it (--audit-fail open)\n"))
        }
    }


}

func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = Glibc.write(STDERR_FILENO, &bytes, bytes.count)
}
