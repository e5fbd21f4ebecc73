import AuditLog
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// The audit log across a seamless upgrade (docs/audit-log.md, "Across an upgrade"). The
/// running process ends the shared file with a `takeover` record and goes on in a file
/// of its own that starts with `chain-branch`; the successor continues the shared file
/// from the same record. Both chains hang from it, so `audit verify` checks both, and
/// no record is written twice or by two processes into one file.
extension AuditWriter {
    /// What `handOver` asks of the writer thread.
    struct Handover {
        var successor: String
        /// The draining process's own file, created already (O_EXCL) and its path.
        var drainFile: Int32
        var drainPath: String
        var done: @Sendable (AuditChain?) -> Void
    }

    /// In the process taken over: writes what is queued, then a takeover record naming
    /// `successor` and `drainPath`, syncs and closes the shared file, and writes from now
    /// on to `drainFile`. Returns the chain as the takeover record left it (the successor
    /// continues from it), or nil if the shared file could not be written.
    public func handOver(successor: String, drainFile: Int32, drainPath: String) async -> AuditChain? {
        await withCheckedContinuation { continuation in
            let request = Handover(
                successor: successor, drainFile: drainFile, drainPath: drainPath, done: { continuation.resume(returning: $0) })
            state.withLockedValue { $0.handover = request }
            wakeUp.lock()
            wakeUp.unlock(withValue: 1)
        }
    }

    /// In the successor: the predecessor ended the shared file at `chain`; this process
    /// goes on from there. Call before `start()`.
    public func continueChain(after chain: AuditChain, predecessor: String) {
        state.withLockedValue { state in
            state.encoder.chain = chain
            state.chainPending = false
        }
        enqueueFirst(.chainContinue(previousFile: "\(path) (taken over from \(predecessor))"))
    }

    /// In the successor, when the predecessor's shared file cannot be continued (another
    /// path, standard output, none, or no answer): the chain as the file ends now, or, if
    /// it cannot be read (a line cut by a predecessor that hung, or no permission after the
    /// privilege drop), a new chain, which `audit verify` shows as a break at this place.
    public func startOwnChain() {
        var start: AuditRecord = .chainStart(seed: state.withLockedValue { $0.encoder.chain.lastHash })
        if path != "-" {
            do {
                if let chain = try AuditTail.chain(continuing: path) {
                    state.withLockedValue { $0.encoder.chain = chain }
                    start = .chainContinue(previousFile: path)
                }
            } catch {
                writeToStandardError("identgate: \(error); the audit log goes on with a new chain\n")
            }
        }
        state.withLockedValue { $0.chainPending = false }
        enqueueFirst(start)
    }

    /// On the writer thread: the takeover record, then the switch to the drain file.
    func endFileForSuccessor(_ handover: Handover) {
        let batch = state.withLockedValue { state in
            defer {
                state.writing = state.queue.count
                state.queue = []
            }
            return state.queue
        }
        if !batch.isEmpty { write(batch) }
        var takeover = AuditRecord.takeover(successor: handover.successor, drainFile: handover.drainPath)
        takeover.time = AuditChain.timestamp()
        let written = state.withLockedValue { $0.healthy }
        if written {
            if checkpointDue(stopping: true) { write([], closingCheckpoint: true) }
            write([Entry(record: takeover, written: nil)])
        }
        let (chain, shared) = state.withLockedValue { state in
            defer {
                state.handover = nil
                state.descriptor = handover.drainFile
                state.drainPath = handover.drainPath
            }
            return (state.healthy ? state.encoder.chain : nil, state.descriptor)
        }
        fsync(shared)
        if shared != STDOUT_FILENO { close(shared) }
        enqueueFirst(.chainBranch(previousFile: path))
        handover.done(chain)
    }

    /// Stopping while still waiting for the predecessor: the records are not written
    /// (the shared file is the predecessor's), requests waiting for theirs are refused.
    func discardPendingChain() {
        let entries = state.withLockedValue { state in
            defer { state.queue = [] }
            return state.queue
        }
        for entry in entries { entry.written?.fail(NotWritten(description: "the takeover did not happen")) }
        if !entries.isEmpty {
            writeToStandardError(
                "identgate: the takeover did not complete: \(entries.count) audit records of this process are not written "
                    + "(the running gateway's log stays as it was)\n")
        }
    }
}
