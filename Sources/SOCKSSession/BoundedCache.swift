/// A dictionary that holds at most `capacity` entries: adding one more drops the oldest
/// added. For what a client can make the gateway remember (a UDP association's verdicts
/// and resolutions), so that one client cannot grow it without end.
public struct BoundedCache<Key: Hashable, Value> {
    public let capacity: Int
    /// Each value with the number of its insertion, which `order` refers to.
    private var values: [Key: (value: Value, added: UInt64)] = [:]
    /// Keys in the order they were added; `order[head...]` may still be held (an entry
    /// removed or added again since is skipped: its number no longer matches).
    private var order: [(key: Key, added: UInt64)] = []
    private var head = 0
    private var additions: UInt64 = 0
    /// Entries dropped to make room, since the start.
    public private(set) var evicted = 0

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    public subscript(key: Key) -> Value? {
        values[key]?.value
    }

    public var count: Int { values.count }

    public mutating func set(_ value: Value, for key: Key) {
        if let existing = values[key] {
            values[key] = (value, existing.added)
            return
        }
        additions += 1
        values[key] = (value, additions)
        order.append((key, additions))
        if values.count > capacity { evictOldest() }
        // Removals leave stale places behind; rebuild the order before they pile up.
        if order.count - head > 2 * capacity {
            order = values.map { ($0.key, $0.value.added) }.sorted { $0.1 < $1.1 }
            head = 0
        }
    }

    public mutating func remove(_ key: Key) {
        values[key] = nil
    }

    public mutating func removeAll() {
        values.removeAll()
        order.removeAll()
        head = 0
    }

    private mutating func evictOldest() {
        while head < order.count {
            let oldest = order[head]
            head += 1
            if values[oldest.key]?.added == oldest.added {
                values[oldest.key] = nil
                evicted += 1
                break
            }
        }
        // Keep `order` from growing: drop the consumed prefix now and then.
        if head > capacity {
            order.removeFirst(head)
            head = 0
        }
    }
}

extension BoundedCache: Sendable where Key: Sendable, Value: Sendable {}
