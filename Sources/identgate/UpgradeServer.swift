import AuditLog
import Foundation
import Gateway
import Logging
import PrintableText
import Privileges
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A seamless upgrade from the running gateway's side: a thread that waits on the upgrade
/// socket, hands the listeners to a successor that root or this user started, and then
/// tells the serving loop to drain (`TakenOver`). One successor at a time; a takeover that
/// fails on the successor's side leaves this gateway serving as before.
final class UpgradeServer: Sendable {
    /// A successor took the listeners and accepts on them.
    struct TakenOver: Sendable {
        var connection: HandoverSocket
        var successor: HandoverSocket.Peer
        /// This process's own audit file from now on (nil: no shared file to leave).
        var drainFile: (descriptor: Int32, path: String)?
    }

    private let listener: Int32
    private let handed: [(listener: HandedSockets.Listener, descriptor: Int32)]
    private let upcomingSession: @Sendable () -> UInt64
    /// The audit log's absolute path; nil: none, or standard output.
    private let auditPath: String?
    private let audit: AuditWriter?
    private let logger: Logger
    private let takenOver: @Sendable (TakenOver) -> Void

    private enum Phase {
        case serving
        /// Sending the listeners to a successor; `stopAsked`: `finish` came meanwhile.
        case handing(stopAsked: Bool)
        case takenOver(TakenOver)
        case stopped
    }

    /// Whether the listeners still belong here. Held while their descriptors are sent, so
    /// that they are never closed (and their numbers reused) under a send.
    private let phase = Mutex(Phase.serving)
    /// When a refusal was last logged and recorded, and how many came since.
    private let refusals = Mutex<(lastRecorded: ContinuousClock.Instant?, unrecorded: Int)>((nil, 0))

    init(
        listener: Int32, handing handed: [(listener: HandedSockets.Listener, descriptor: Int32)],
        upcomingSession: @escaping @Sendable () -> UInt64, auditPath: String?, audit: AuditWriter?, logger: Logger,
        takenOver: @escaping @Sendable (TakenOver) -> Void
    ) {
        self.listener = listener
        self.handed = handed + [(.upgrade, listener)]
        self.upcomingSession = upcomingSession
        self.auditPath = auditPath
        self.audit = audit
        self.logger = logger
        self.takenOver = takenOver
    }

    func start() {
        let thread = Thread { [self] in
            defer { close(listener) }
            while let connection = HandoverSocket.accept(on: listener) {
                if let done = serve(connection) {
                    // The successor serves the upgrade socket now, with its own copy.
                    takenOver(done)
                    return
                }
                connection.close()
                if case .stopped = phase.withLock({ $0 }) { return }
            }
        }
        thread.name = "identgate-upgrade"
        thread.start()
    }

    /// The serving loop ends (a signal, or the event of a takeover): the successor that
    /// has the listeners, which this process must drain for; or nil, and no successor will
    /// get them from now on (one being handed them is refused before it accepts).
    func finish() -> TakenOver? {
        let handedOver: TakenOver? = phase.withLock { phase in
            switch phase {
            case .takenOver(let successor):
                return successor
            case .handing:
                phase = .handing(stopAsked: true)
                return nil
            case .serving, .stopped:
                phase = .stopped
                return nil
            }
        }
        // Wakes the thread from its accept. Not once a successor has the socket: shutdown
        // acts on the socket itself, which the successor listens on now.
        if handedOver == nil { shutdown(listener, Int32(SHUT_RDWR)) }
        return handedOver
    }

    /// One successor: nil if the takeover did not happen (refused, or it failed there).
    private func serve(_ connection: HandoverSocket) -> TakenOver? {
        guard let peer = connection.peer else { return nil }
        let trusted = peer.uid == 0 || peer.uid == geteuid()
        // An untrusted peer is refused at once and its request read within a second after
        // (a socket closed with a message unread resets the connection, and the refusal
        // would not arrive): whoever may connect holds the upgrade socket for a second at
        // most, not the ten a successor is given.
        if !trusted {
            refuse(connection, peer: peer, reason: "uid \(peer.uid) is neither root nor this gateway's user (uid \(geteuid()))")
            if let (_, descriptors) = try? connection.receive(timeout: 1) { for descriptor in descriptors { close(descriptor) } }
            return nil
        }
        let asked: String
        do {
            let (text, descriptors) = try connection.receive(timeout: 10)
            for descriptor in descriptors { close(descriptor) }
            asked = text
        } catch {
            logger.warning("upgrade socket: no takeover request", metadata: ["peer": "\(peer)", "error": "\(error)"])
            return nil
        }
        switch HandoverMessage(asked) {
        case .takeover:
            break
        case .askArguments:
            // `identgate upgrade`: how this gateway was started, so that the new binary
            // starts the same way.
            try? connection.send(HandoverMessage.arguments(Array(CommandLine.arguments.dropFirst())).text)
            return nil
        default:
            refuse(connection, peer: peer, reason: "not a takeover request: \(DisplayText.escaped(asked))")
            return nil
        }
        var drainFile: (descriptor: Int32, path: String)?
        if let auditPath, audit != nil {
            let path = Self.drainPath(for: auditPath)
            let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o640)
            guard descriptor >= 0 else {
                refuse(
                    connection, peer: peer,
                    reason: "this gateway cannot create \(path) for the records of its draining sessions "
                        + "(\(String(cString: strerror(errno)))): make the audit log's directory writable by its user")
                return nil
            }
            drainFile = (descriptor, path)
        }
        let sockets = HandedSockets(
            pid: getpid(), firstSession: HandedSockets.firstSession(after: upcomingSession()), auditLog: auditPath, listeners: handed.map(\.listener))
        let abandon = {
            if let drainFile {
                close(drainFile.descriptor)
                unlink(drainFile.path)
            }
        }
        do {
            try phase.withLock { phase in
                guard case .serving = phase else { throw HandoverSocket.Failure(description: "this gateway is stopping") }
                phase = .handing(stopAsked: false)
                try connection.send(HandoverMessage.sockets(sockets).text, descriptors: handed.map(\.descriptor))
            }
            let (answer, _) = try connection.receive(timeout: 60)
            guard case .serving = HandoverMessage(answer) else {
                throw HandoverSocket.Failure(description: "the successor did not start: \(DisplayText.escaped(answer))")
            }
        } catch {
            logger.error("takeover failed; serving on as before", metadata: ["successor": "\(peer)", "error": "\(error)"])
            try? connection.send(HandoverMessage.refused(reason: "\(error)").text)
            phase.withLock { phase in
                if case .handing(stopAsked: false) = phase { phase = .serving } else { phase = .stopped }
            }
            abandon()
            return nil
        }
        let successor = TakenOver(connection: connection, successor: peer, drainFile: drainFile)
        let stopping = phase.withLock { phase in
            if case .handing(stopAsked: true) = phase {
                phase = .stopped
                return true
            }
            phase = .takenOver(successor)
            return false
        }
        if stopping {
            // It set its listeners up but accepts nothing until told: it exits, and this
            // gateway stops as it was asked to.
            refuse(connection, peer: peer, reason: "this gateway is stopping (a signal came during the takeover)")
            abandon()
            return nil
        }
        logger.notice("taken over: the successor accepts on the listeners now", metadata: ["successor": "\(peer)"])
        return successor
    }

    private func refuse(_ connection: HandoverSocket, peer: HandoverSocket.Peer, reason: String) {
        try? connection.send(HandoverMessage.refused(reason: reason).text)
        // Anyone may connect: at most one log line and record a second, the refusals in
        // between counted in the next.
        let unrecorded: Int? = refusals.withLock { refusals in
            let now = ContinuousClock.now
            if let last = refusals.lastRecorded, now - last < .seconds(1) {
                refusals.unrecorded += 1
                return nil
            }
            defer { refusals = (now, 0) }
            return refusals.unrecorded
        }
        guard let unrecorded else { return }
        let more = unrecorded > 0 ? " (and \(unrecorded) more since the last recorded)" : ""
        logger.warning("upgrade socket: takeover refused\(more)", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
        audit?.record(.takeoverRefused(peer: peer.description, reason: reason + more))
    }

    /// Beside the shared file, named by the time and this process: never an existing file.
    static func drainPath(for auditPath: String) -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        let stamp = String(
            format: "%04d%02d%02dT%02d%02d%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min,
            parts.tm_sec)
        return "\(auditPath).drain-\(stamp)-\(getpid())"
    }
}
