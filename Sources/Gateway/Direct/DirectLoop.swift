import CDirectIO
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// One thread with an epoll set of its own: the direct driver's event loop
/// (docs/architecture.md, "The direct connection driver"). It owns its listening sockets
/// and every connection accepted on them; nothing of that is touched from another
/// thread. Other threads reach it only through `execute`, which wakes it by an eventfd.
///
/// Sockets are registered once, edge-triggered, for reading, writing and the peer's
/// half-close, and never modified: a connection costs one `epoll_ctl` per socket
/// (SwiftNIO's channels make several per connection).
final class DirectLoop: @unchecked Sendable {
    /// What a registered descriptor is, in the table indexed by descriptor.
    enum Registration {
        case listener(DirectListener)
        case client(DirectConnection)
        case outbound(DirectConnection)
    }

    let index: Int
    private let epoll: Int32
    private let wakeup: Int32
    private let submitted = NIOLockedValueBox<[@Sendable () -> Void]>([])
    /// Loop-owned from here on.
    private var table: [(generation: UInt32, registration: Registration)?] = []
    private var nextGeneration: UInt32 = 1
    private var timers = DeadlineHeap()
    /// Connections that stopped moving bytes to be fair to the others and continue next turn.
    private var resumable: [DirectConnection] = []
    private(set) var listeners: [DirectListener] = []
    /// Open connections on this loop (negotiating, connecting or relaying).
    private(set) var connections = 0
    /// The monotonic time of this turn, in nanoseconds: one clock read per turn.
    private(set) var now: UInt64 = DirectLoop.monotonicNow()
    /// Where every read lands before it is written on: one buffer per loop, so an idle
    /// connection holds no buffer at all.
    let scratch: UnsafeMutableRawPointer
    private var running = true
    /// Called on this loop whenever its last connection closes.
    var onIdle: (() -> Void)?

    static let scratchSize = 256 * 1024

    init(index: Int) throws {
        self.index = index
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeup = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard epoll >= 0, wakeup >= 0 else {
            let code = errno
            if epoll >= 0 { close(epoll) }
            if wakeup >= 0 { close(wakeup) }
            throw DirectDriverError.system("epoll_create1/eventfd", code)
        }
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.scratchSize, alignment: 16)
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64(UInt32.max)
        epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup, &event)
    }

    deinit {
        close(epoll)
        close(wakeup)
        scratch.deallocate()
    }

    static func monotonicNow() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    // MARK: From any thread

    /// Runs `work` on this loop's thread, soon.
    func execute(_ work: @escaping @Sendable () -> Void) {
        submitted.withLockedValue { $0.append(work) }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    // MARK: On the loop

    /// Registers `descriptor` for its events; returns the generation that tells its events
    /// from those of an earlier descriptor with the same number.
    @discardableResult
    func register(_ descriptor: Int32, as registration: Registration, events: UInt32) -> UInt32? {
        let generation = nextGeneration
        nextGeneration = nextGeneration == UInt32.max - 1 ? 1 : nextGeneration + 1
        var event = epoll_event()
        event.events = events
        event.data.u64 = UInt64(UInt32(bitPattern: descriptor)) | UInt64(generation) << 32
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) == 0 else { return nil }
        let slot = Int(descriptor)
        if table.count <= slot { table += Array(repeating: nil, count: slot + 1 - table.count + 64) }
        table[slot] = (generation, registration)
        return generation
    }

    /// Forgets `descriptor`; `removeInterest`: it stays open (handed over, or a paused
    /// listener), so it leaves the epoll set too. A closed descriptor leaves it by itself.
    func unregister(_ descriptor: Int32, removeInterest: Bool = false) {
        if removeInterest { epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, nil) }
        let slot = Int(descriptor)
        if slot < table.count { table[slot] = nil }
    }

    /// Events for a connection's sockets: readable, writable and the peer's half-close,
    /// edge-triggered.
    static let connectionEvents = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue

    /// The peer hung up or the socket failed: a short read no longer means "no more".
    static let hangupEvents = EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue

    func connectionOpened() { connections += 1 }

    func connectionClosed() {
        connections -= 1
        if connections == 0 { onIdle?() }
    }

    func addListener(_ listener: DirectListener) { listeners.append(listener) }

    func removeListener(_ listener: DirectListener) { listeners.removeAll { $0 === listener } }

    /// `connection`'s `deadlineFired` runs at `deadline` (monotonic ns), unless its
    /// descriptor is closed or reused by then; the connection checks whether the deadline
    /// is still its own.
    func schedule(_ connection: DirectConnection, at deadline: UInt64) {
        timers.push(DeadlineHeap.Entry(when: deadline, descriptor: connection.client, generation: connection.generation))
    }

    /// Runs `work` after `delay` nanoseconds (listener pauses; rare).
    func schedule(after delay: UInt64, _ work: @escaping () -> Void) {
        timers.pushWork(at: now &+ delay, work)
    }

    /// Continues `connection`'s relay next turn (it stopped after its fair share).
    func resumeNextTurn(_ connection: DirectConnection) { resumable.append(connection) }

    /// The connections open on this loop, for a shutdown.
    var openConnections: [DirectConnection] {
        table.compactMap { entry in
            if case .client(let connection)? = entry?.registration { return connection }
            return nil
        }
    }

    func stop() { running = false }

    /// The loop itself, until `stop`.
    func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            let timeout: Int32 =
                !resumable.isEmpty ? 0 : timers.next.map { when in when <= now ? 0 : Int32(min((when - now + 999_999) / 1_000_000, 60_000)) } ?? -1
            let count = epoll_wait(epoll, events, Int32(capacity), timeout)
            now = Self.monotonicNow()
            if count > 0 {
                for item in 0..<Int(count) { dispatch(events[item]) }
            }
            if !resumable.isEmpty {
                let turn = resumable
                resumable = []
                for connection in turn { connection.resume() }
            }
            fireTimers()
        }
    }

    private func dispatch(_ event: epoll_event) {
        let data = event.data.u64
        if data == UInt64(UInt32.max) { return runSubmitted() }
        let descriptor = Int(UInt32(truncatingIfNeeded: data))
        let generation = UInt32(truncatingIfNeeded: data >> 32)
        guard descriptor < table.count, let entry = table[descriptor], entry.generation == generation else { return }
        switch entry.registration {
        case .listener(let listener): listener.acceptReady()
        case .client(let connection): connection.clientReady(event.events)
        case .outbound(let connection): connection.outboundReady(event.events)
        }
    }

    private func runSubmitted() {
        var count: UInt64 = 0
        _ = read(wakeup, &count, 8)
        let work = submitted.withLockedValue { work in
            defer { work = [] }
            return work
        }
        for item in work { item() }
    }

    private func fireTimers() {
        while let entry = timers.popDue(now: now) {
            switch entry {
            case .work(let work):
                work()
            case .connection(let descriptor, let generation):
                guard Int(descriptor) < table.count, let slot = table[Int(descriptor)], slot.generation == generation,
                    case .client(let connection) = slot.registration
                else { continue }
                connection.deadlineFired()
            }
        }
    }
}

/// Deadlines by time: a binary heap. An entry stays until its time even if its
/// connection has gone or moved its deadline; the connection's descriptor and
/// generation, and its own deadline, tell whether it still counts.
struct DeadlineHeap {
    struct Entry {
        var when: UInt64
        var descriptor: Int32
        var generation: UInt32
    }

    enum Due {
        case connection(descriptor: Int32, generation: UInt32)
        case work(() -> Void)
    }

    private var entries: [Entry] = []
    /// Work by time; few (listener pauses), so a plain list.
    private var work: [(when: UInt64, run: () -> Void)] = []

    var next: UInt64? {
        let first = entries.first?.when
        let firstWork = work.map(\.when).min()
        switch (first, firstWork) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    mutating func pushWork(at when: UInt64, _ run: @escaping () -> Void) {
        work.append((when, run))
    }

    mutating func push(_ entry: Entry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].when < entries[parent].when else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popDue(now: UInt64) -> Due? {
        if let index = work.firstIndex(where: { $0.when <= now }) {
            return .work(work.remove(at: index).run)
        }
        guard let first = entries.first, first.when <= now else { return nil }
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < entries.count, entries[left].when < entries[smallest].when { smallest = left }
                if right < entries.count, entries[right].when < entries[smallest].when { smallest = right }
                guard smallest != parent else { break }
                entries.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return .connection(descriptor: first.descriptor, generation: first.generation)
    }
}

/// A system call of the direct driver's own setup failed.
enum DirectDriverError: Error, CustomStringConvertible {
    case system(String, Int32)

    var description: String {
        switch self {
        case .system(let call, let code): "\(call): \(String(cString: strerror(code)))"
        }
    }
}
