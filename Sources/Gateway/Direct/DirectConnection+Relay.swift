import CDirectIO
import AuditLog
import NIOCore
import Prometheus

#if canImport(Glibc)
    import Glibc
#endif

/// One direction of a relay (client → destination, or back).
///
/// Readiness is edge-triggered, so `sourceReady` remembers that the source may still
/// have bytes (or its EOF, or an error) until a read says otherwise: a read shorter than
/// asked for, or EAGAIN. Backpressure as `RelayHandler`'s: bytes the sink did not take
/// wait in `pending`, and the source is not read until they are gone (memory per relay:
/// at most one read per direction). Half-close: the source's EOF becomes a shutdown of
/// the sink's sending side, after every pending byte.
struct RelayDirection {
    var pending: [UInt8] = []
    var pendingOffset = 0
    var sourceReady = false
    /// The source hung up or failed (EPOLLRDHUP, HUP, ERR): read on until EOF or an
    /// error, however short a read (the edge has been reported once).
    var sourceClosing = false
    var sourceEOF = false
    var sinkShut = false
    var bytes: UInt64 = 0

    var finished: Bool { sourceEOF && sinkShut && pending.isEmpty }
}

extension DirectConnection {
    /// Reads per direction per turn before the other connections get theirs.
    static let readsPerTurn = 16

    /// After the success reply: the early bytes go first, then both sockets are read as
    /// they become readable.
    func beginRelay(destinationReadable: Bool, destinationHungUp: Bool) {
        phase = .relaying
        relayStarted = loop.now
        lastActivity = loop.now
        if let early = received {
            // Read before the reply, sent first: counted as the relay's own reads are.
            up.pending = Array(early.readableBytesView)
            up.bytes = UInt64(early.readableBytes)
            gateway.metrics?.tcpFromClients.increment(by: Int64(early.readableBytes))
            received = nil
        }
        up.sourceEOF = clientEOF
        // Read at once only if bytes were left unread (past `EarlyClientData.limit`): an
        // emptied socket reports its next bytes as a new edge (one read fewer per connection).
        up.sourceReady = !clientEOF && clientMayHoldMore
        up.sourceClosing = clientHungUp
        down.sourceReady = destinationReadable || destinationHungUp
        down.sourceClosing = destinationHungUp
        if let idle = gateway.configuration.idleTimeout {
            deadline = loop.now &+ UInt64(idle.nanoseconds)
            loop.schedule(self)
        } else {
            loop.cancelDeadline(self)
        }
        pump()
    }

    func clientEventDuringRelay(_ events: UInt32) {
        if events & DirectLoop.readableEvents != 0 { up.sourceReady = true }
        if events & DirectLoop.hangupEvents != 0 { up.sourceClosing = true }
        pump()
    }

    func outboundEventDuringRelay(_ events: UInt32) {
        if events & DirectLoop.readableEvents != 0 { down.sourceReady = true }
        if events & DirectLoop.hangupEvents != 0 { down.sourceClosing = true }
        pump()
    }

    /// The next turn after this connection yielded.
    func resume() {
        resumeQueued = false
        pump()
    }

    func pump() {
        guard phase == .relaying else { return }
        let counters = gateway.metrics.map { (fromClient: $0.tcpFromClients, toClient: $0.tcpToClients) }
        if let failure = transfer(
            &up, from: client, to: outbound, otherFinished: down.finished, sourceName: "client", sinkName: "destination",
            counter: counters?.fromClient)
        {
            return endRelay(failure)
        }
        if let failure = transfer(
            &down, from: outbound, to: client, otherFinished: up.finished, sourceName: "destination", sinkName: "client",
            counter: counters?.toClient)
        {
            return endRelay(failure)
        }
        if up.finished, down.finished { endRelay("closed") }
    }

    /// Moves what can be moved one way without blocking; nil, or why the relay failed.
    /// `otherFinished`: the other way is done, so this way's EOF ends the relay, and the
    /// close that follows sends the sink its FIN (no shutdown call of its own).
    private func transfer(
        _ direction: inout RelayDirection, from source: Int32, to sink: Int32, otherFinished: Bool, sourceName: String,
        sinkName: String, counter: Counter?
    ) -> String? {
        if !direction.pending.isEmpty {
            while direction.pendingOffset < direction.pending.count {
                let offset = direction.pendingOffset
                let written = direction.pending.withUnsafeBytes { bytes in
                    Glibc.send(sink, bytes.baseAddress.map { $0 + offset }, bytes.count - offset, Int32(MSG_NOSIGNAL))
                }
                if written > 0 {
                    direction.pendingOffset += written
                    continue
                }
                let code = errno
                if written < 0, code == EINTR { continue }
                if written < 0, code == EAGAIN || code == EWOULDBLOCK { return nil }
                return "\(sinkName) \(RelayHandler.describe(errno: code))"
            }
            direction.pending = []
            direction.pendingOffset = 0
        }
        if direction.sourceEOF {
            if !direction.sinkShut {
                if !otherFinished { shutdown(sink, Int32(SHUT_WR)) }
                direction.sinkShut = true
            }
            return nil
        }
        var reads = 0
        while direction.sourceReady {
            guard reads < Self.readsPerTurn else {
                if !resumeQueued {
                    resumeQueued = true
                    loop.resumeNextTurn(self)
                }
                return nil
            }
            let scratch = loop.scratch
            let size = DirectLoop.scratchSize
            let count = read(source, scratch, size)
            if count > 0 {
                reads += 1
                direction.bytes &+= UInt64(count)
                counter?.increment(by: Int64(count))
                lastActivity = loop.now
                if count < size, !direction.sourceClosing { direction.sourceReady = false }
                // The source hung up and this read did not fill the buffer: what follows is
                // most likely its EOF, read next. MSG_MORE holds these bytes back until then,
                // so that they leave with the FIN in one segment and the sink's reader wakes
                // once for both (a response and the close, as HTTP/1.0 servers send them).
                // Whatever comes next (more bytes, the FIN of a shutdown, a close) sends
                // them: no path leaves them held.
                let flags = Int32(MSG_NOSIGNAL) | (direction.sourceClosing && count < size ? Int32(MSG_MORE) : 0)
                var written = 0
                while written < count {
                    let sent = Glibc.send(sink, scratch + written, count - written, flags)
                    if sent > 0 {
                        written += sent
                        continue
                    }
                    let code = errno
                    if sent < 0, code == EINTR { continue }
                    if sent < 0, code == EAGAIN || code == EWOULDBLOCK { break }
                    return "\(sinkName) \(RelayHandler.describe(errno: code))"
                }
                if written < count {
                    // The sink is full: the rest waits for its writability, the source for the rest.
                    direction.pending = Array(UnsafeRawBufferPointer(start: scratch + written, count: count - written))
                    return nil
                }
            } else if count == 0 {
                direction.sourceReady = false
                direction.sourceEOF = true
                if !otherFinished { shutdown(sink, Int32(SHUT_WR)) }
                direction.sinkShut = true
            } else {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    direction.sourceReady = false
                } else {
                    return "\(sourceName) \(RelayHandler.describe(errno: code))"
                }
            }
        }
        return nil
    }

    /// The idle deadline passed: ended if nothing moved since, else it moves on.
    func idleDeadlinePassed() {
        guard let idle = gateway.configuration.idleTimeout else { return }
        let due = lastActivity &+ UInt64(idle.nanoseconds)
        if loop.now >= due { return endRelay("idle timeout") }
        deadline = due
        loop.schedule(self)
    }

    /// The relay ended: both sockets closed, the session's one end record written.
    func endRelay(_ reason: String) {
        guard phase == .relaying else { return }
        let duration = Duration.nanoseconds(Int64(loop.now &- relayStarted))
        closeSession()
        gateway.audit?.record(
            .sessionEnd(session: sessionID, reason: reason, bytesFromClient: up.bytes, bytesToClient: down.bytes, duration: duration))
    }
}
