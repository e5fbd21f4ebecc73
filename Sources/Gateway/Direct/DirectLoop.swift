import CDirectIO
import HTTPHead
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
    private var deadlines = DeadlineHeap<DirectConnection>()
    /// Work by time; few (listener pauses), so a plain list.
    private var timedWork: [(when: UInt64, run: () -> Void)] = []
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
    /// NIOHTTP1's decoder for HTTP CONNECT heads; made on this loop's thread at its first
    /// use, and dropped there as `run` ends (it must not be touched by another thread).
    private var httpHeadReader: HTTPHeadReader?
    var httpHeads: HTTPHeadReader {
        if let httpHeadReader { return httpHeadReader }
        let reader = HTTPHeadReader()
        httpHeadReader = reader
        return reader
    }
    /// Called on this loop whenever its last connection closes.
    var onIdle: (() -> Void)?

    static let scratchSize = 256 * 1024

    /// `--busy-poll` in nanoseconds: after a turn with events, how long to poll for more
    /// before sleeping.
    private let busyPoll: UInt64

    init(index: Int, busyPoll: UInt64 = 0) throws {
        self.index = index
        self.busyPoll = busyPoll
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

    /// Something to read: data, the peer's EOF, or an error a read reports.
    static let readableEvents = EPOLLIN.rawValue | hangupEvents

    func connectionOpened() { connections += 1 }

    func connectionClosed() {
        connections -= 1
        if connections == 0 { onIdle?() }
    }

    func addListener(_ listener: DirectListener) { listeners.append(listener) }

    func removeListener(_ listener: DirectListener) { listeners.removeAll { $0 === listener } }

    /// `connection.deadlineFired` runs when its `deadline` passes; call again after
    /// changing the deadline.
    func schedule(_ connection: DirectConnection) {
        deadlines.schedule(connection)
    }

    /// The connection closed or left: no deadline of its is kept.
    func cancelDeadline(_ connection: DirectConnection) {
        deadlines.remove(connection)
    }

    /// Runs `work` after `delay` nanoseconds (listener pauses; rare).
    func schedule(after delay: UInt64, _ work: @escaping () -> Void) {
        timedWork.append((now &+ delay, work))
    }

    /// The next time anything is due.
    private var nextDue: UInt64? {
        var next = deadlines.next
        for work in timedWork where next.map({ work.when < $0 }) ?? true { next = work.when }
        return next
    }

    /// Continues `connection`'s relay next turn (it stopped after its fair share).
    func resumeNextTurn(_ connection: DirectConnection) { resumable.append(connection) }

    /// The client connection registered as `descriptor` in `generation`, if it is still
    /// open: where work that ran elsewhere (a host name's lookup) finds its connection.
    func clientConnection(_ descriptor: Int32, generation: UInt32) -> DirectConnection? {
        let slot = Int(descriptor)
        guard slot >= 0, slot < table.count, let entry = table[slot], entry.generation == generation,
            case .client(let connection) = entry.registration
        else { return nil }
        return connection
    }

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
        var hadEvents = false
        defer {
            events.deallocate()
            httpHeadReader = nil
        }
        while running {
            let timeout: Int32 =
                !resumable.isEmpty ? 0 : nextDue.map { when in when <= now ? 0 : Int32(min((when - now + 999_999) / 1_000_000, 60_000)) } ?? -1
            var count = timeout != 0 && hadEvents && busyPoll > 0 ? poll(events, capacity: capacity) : 0
            if count == 0 { count = epoll_wait(epoll, events, Int32(capacity), timeout) }
            hadEvents = count > 0
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

    /// `--busy-poll`: asks for events without sleeping until some come or `busyPoll` has
    /// passed. Only after a turn that had events (a loop woken by nothing, or by a timer,
    /// sleeps at once), so an idle gateway spends nothing, and a busy one at most
    /// `busyPoll` per turn that found work. What it buys: one at a time, the next event of
    /// a connection (the client's answer to a reply, the destination's) often comes within
    /// tens of microseconds, and a loop still running takes it without the sleep, the
    /// wake-up and the waker's inter-processor interrupt (docs/performance.md).
    private func poll(_ events: UnsafeMutablePointer<epoll_event>, capacity: Int) -> Int32 {
        let until = Self.monotonicNow() &+ busyPoll
        repeat {
            let count = epoll_wait(epoll, events, Int32(capacity), 0)
            if count != 0 { return count }
        } while Self.monotonicNow() < until
        return 0
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
        while let connection = deadlines.popDue(now: now) {
            connection.deadlineFired()
        }
        if timedWork.contains(where: { $0.when <= now }) {
            let due = timedWork.filter { $0.when <= now }
            timedWork.removeAll { $0.when <= now }
            for work in due { work.run() }
        }
    }
}

/// What a `DeadlineHeap` holds: an object with one deadline, in the heap at most once.
protocol Deadlined: AnyObject {
    /// Monotonic nanoseconds.
    var deadline: UInt64 { get }
    /// Its place in the heap; -1 when not in it. The heap's to set.
    var heapIndex: Int { get set }
}

/// Deadlines by time: a binary heap that knows where each element is, so that a deadline
/// moved or cancelled (a connection that closed) leaves the heap at once. It holds the
/// open connections and nothing else: an idle time-out of an hour costs no memory once
/// its connection has gone.
struct DeadlineHeap<Element: Deadlined> {
    private(set) var elements: [Element] = []

    var next: UInt64? { elements.first?.deadline }
    var count: Int { elements.count }

    /// Adds `element`, or moves it after its deadline changed.
    mutating func schedule(_ element: Element) {
        if element.heapIndex < 0 || element.heapIndex >= elements.count || elements[element.heapIndex] !== element {
            element.heapIndex = elements.count
            elements.append(element)
        }
        siftUp(siftDown(element.heapIndex))
    }

    mutating func remove(_ element: Element) {
        let index = element.heapIndex
        guard index >= 0, index < elements.count, elements[index] === element else { return }
        element.heapIndex = -1
        let last = elements.removeLast()
        guard index < elements.count else { return }
        elements[index] = last
        last.heapIndex = index
        siftUp(siftDown(index))
    }

    /// The earliest element whose deadline is `now` or past, taken out of the heap.
    mutating func popDue(now: UInt64) -> Element? {
        guard let first = elements.first, first.deadline <= now else { return nil }
        remove(first)
        return first
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        elements.swapAt(a, b)
        elements[a].heapIndex = a
        elements[b].heapIndex = b
    }

    @discardableResult
    private mutating func siftUp(_ start: Int) -> Int {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard elements[child].deadline < elements[parent].deadline else { break }
            swapAt(child, parent)
            child = parent
        }
        return child
    }

    private mutating func siftDown(_ start: Int) -> Int {
        var parent = start
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < elements.count, elements[left].deadline < elements[smallest].deadline { smallest = left }
            if right < elements.count, elements[right].deadline < elements[smallest].deadline { smallest = right }
            guard smallest != parent else { return parent }
            swapAt(parent, smallest)
            parent = smallest
        }
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
