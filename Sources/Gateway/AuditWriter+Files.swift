import AuditLog

#if canImport(Glibc)
    import Glibc
#endif

/// The writer's file: syncing it by the policy, and opening it anew (SIGUSR1).
extension AuditWriter {
    func syncIfDue(force: Bool) {
        let (descriptor, due) = state.withLockedValue { state in
            (state.descriptor, force || (sync == .batch && ContinuousClock.now - state.lastSync >= .seconds(1)))
        }
        guard due, sync != .none || force else { return }
        fsync(descriptor)
        state.withLockedValue { $0.lastSync = ContinuousClock.now }
    }

    func reopenFile() {
        let path = state.withLockedValue { $0.drainPath } ?? self.path
        guard path != "-" else { return }
        let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o640)
        guard descriptor >= 0 else {
            fail("cannot reopen the audit log \(path): \(String(cString: strerror(errno)))")
            return
        }
        let old = state.withLockedValue { state in
            defer { state.descriptor = descriptor }
            return state.descriptor
        }
        fsync(old)
        close(old)
        enqueueFirst(.chainContinue(previousFile: path + " (before reopen)"))
    }
}
