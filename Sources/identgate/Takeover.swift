import AuditLog
import CommandSupport
import Foundation
import Gateway
import Logging
import NetAddress
import PrintableText
import Privileges
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A seamless upgrade from the successor's side (docs/operations.md, "Seamless upgrade"):
/// connected to the running gateway's upgrade socket while still root, the exchange after
/// the privilege drop and the policy's tests, just before serving, so that the running
/// gateway keeps accepting for as long as possible.
final class Takeover: Sendable {
    let connection: HandoverSocket
    let predecessor: HandoverSocket.Peer

    private init(connection: HandoverSocket, predecessor: HandoverSocket.Peer) {
        self.connection = connection
        self.predecessor = predecessor
    }
    /// The running gateway's pid, as it says (SO_PEERCRED names the process that made the
    /// upgrade socket, an earlier one after earlier takeovers).
    private let announcedPID = Mutex<Int32?>(nil)

    /// The running gateway at `path`, if one answers; only root or the user this process
    /// runs as (or becomes) is trusted to hand over sockets.
    static func find(at path: String, trusting users: Set<UInt32>) throws -> Takeover? {
        let connection: HandoverSocket?
        do {
            connection = try HandoverSocket.connect(to: path)
        } catch {
            throw FailedStart(message: "\(error)")
        }
        guard let connection else { return nil }
        guard let peer = connection.peer, users.contains(peer.uid) else {
            connection.close()
            throw FailedStart(
                message: "the process serving the upgrade socket \(path) (\(connection.peer?.description ?? "unknown")) is neither root nor this gateway's user: not taking sockets from it")
        }
        return Takeover(connection: connection, predecessor: peer)
    }

    var name: String { "pid \(announcedPID.withLock { $0 } ?? predecessor.pid)" }

    /// The listeners, checked: listening TCP sockets for the gateway and metrics, the
    /// upgrade socket listening too. Anything else ends the start with a message.
    func receiveSockets() throws -> (sockets: HandedSockets, descriptors: [Int32]) {
        do {
            try connection.send(HandoverMessage.takeover(pid: getpid()).text)
            let (text, descriptors) = try connection.receive(timeout: 30)
            switch HandoverMessage(text) {
            case .sockets(let sockets) where sockets.listeners.count == descriptors.count:
                announcedPID.withLock { $0 = sockets.pid }
                for (listener, descriptor) in zip(sockets.listeners, descriptors) {
                    try Self.check(descriptor, as: listener)
                }
                return (sockets, descriptors)
            case .refused(let reason):
                for descriptor in descriptors { close(descriptor) }
                throw FailedStart(message: "the running gateway (\(name)) refused the takeover: \(reason)")
            default:
                for descriptor in descriptors { close(descriptor) }
                throw FailedStart(message: "the running gateway (\(name)) answered the takeover with something else: \(DisplayText.escaped(text))")
            }
        } catch let failure as FailedStart {
            throw failure
        } catch {
            throw FailedStart(message: "takeover from \(name): \(error)")
        }
    }

    private static func check(_ descriptor: Int32, as listener: HandedSockets.Listener) throws {
        switch listener {
        case .gateway, .metrics:
            do {
                _ = try ActivatedSockets.check(descriptor, name: "handed over")
            } catch {
                throw FailedStart(message: "takeover: \(error)")
            }
        case .upgrade:
            var listening: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1 else {
                throw FailedStart(message: "takeover: the upgrade socket handed over is not listening")
            }
        }
    }

    /// Tells the running gateway that this one accepts now; it stops accepting and says
    /// where the shared audit file ends.
    func serving() throws -> AuditChain? {
        do {
            try connection.send(HandoverMessage.serving.text)
            let (text, _) = try connection.receive(timeout: 30)
            switch HandoverMessage(text) {
            case .stopped(let chain):
                return chain.map { AuditChain(lastHash: $0.hash, nextSequence: $0.sequence) }
            case .refused(let reason):
                // Nothing was accepted here yet: this process goes, the other one stays.
                throw Refused(message: "the running gateway (\(name)) took its listeners back: \(DisplayText.escaped(reason))")
            default:
                throw FailedStart(message: "the running gateway (\(name)) did not say it stopped: \(DisplayText.escaped(text))")
            }
        } catch let failure as FailedStart {
            throw failure
        } catch let refused as Refused {
            throw refused
        } catch {
            throw FailedStart(message: "takeover from \(name): \(error)")
        }
    }

    /// The running gateway took the listeners back before this one accepted (it is
    /// stopping): this process must not serve.
    struct Refused: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// Tells the running gateway that this one will not serve: it goes on as before.
    func failed(_ reason: String) {
        try? connection.send(HandoverMessage.failed(reason: reason).text)
        connection.close()
    }

    /// Reads the predecessor's draining reports on a thread of its own until it is done:
    /// they are the draining-sessions gauge here, and this process's own reports when it
    /// is taken over in turn (`reported`).
    func followDraining(metrics: GatewayMetrics?, logger: Logger, reported: DrainingReports) {
        let connection = self.connection
        let name = self.name
        let thread = Thread {
            reading: while let (text, descriptors) = try? connection.receive(timeout: nil) {
                for descriptor in descriptors { close(descriptor) }
                switch HandoverMessage(text) {
                case .draining(let sessions):
                    reported.set(sessions ?? 0)
                    metrics?.setDrainingSessions(reported.total)
                case .drained:
                    break reading
                default:
                    continue
                }
            }
            reported.set(0)
            metrics?.setDrainingSessions(reported.total)
            logger.info("the gateway taken over has finished draining", metadata: ["predecessor": "\(name)"])
            connection.close()
        }
        thread.start()
    }
}

/// Sessions older processes still run, as the one taken over last reported them.
final class DrainingReports: Sendable {
    private let count = Mutex(0)

    func set(_ sessions: Int) { count.withLock { $0 = sessions } }
    var total: Int { count.withLock { $0 } }
}
