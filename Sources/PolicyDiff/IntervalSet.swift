/// A set of integers as sorted, disjoint, non-adjacent closed ranges: one dimension of
/// a region of the request space (client addresses, ports, minutes of the week, or the
/// small numbered values of a finite dimension such as the command).
public struct IntervalSet: Hashable, Sendable {
    public private(set) var ranges: [ClosedRange<UInt128>]

    public static let empty = IntervalSet(ranges: [])

    public init(_ range: ClosedRange<UInt128>) {
        ranges = [range]
    }

    /// The union of `ranges`, in any order, overlapping or not.
    public init(union ranges: some Sequence<ClosedRange<UInt128>>) {
        var merged: [ClosedRange<UInt128>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, last.upperBound == .max || range.lowerBound <= last.upperBound + 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        self.ranges = merged
    }

    /// The values, for a finite dimension's numbered values.
    init(values: some Sequence<Int>) {
        self.init(union: values.map { UInt128($0)...UInt128($0) })
    }

    private init(ranges: [ClosedRange<UInt128>]) {
        self.ranges = ranges
    }

    public var isEmpty: Bool { ranges.isEmpty }
    var first: UInt128? { ranges.first?.lowerBound }

    /// True when the set holds exactly one value.
    var isSingle: Bool { ranges.count == 1 && ranges[0].lowerBound == ranges[0].upperBound }

    /// How many values, up to `limit` (an address range's count does not fit anything).
    func count(upTo limit: Int) -> Int {
        var total = 0
        for range in ranges {
            let size = range.upperBound - range.lowerBound
            if size >= UInt128(limit) { return limit }
            total += Int(size) + 1
            if total >= limit { return limit }
        }
        return total
    }

    /// The values of a small set (a finite dimension's), in order.
    var values: [Int] {
        ranges.flatMap { Int($0.lowerBound)...Int($0.upperBound) }
    }

    func contains(_ value: UInt128) -> Bool {
        ranges.contains { $0.contains(value) }
    }

    public func intersection(_ other: IntervalSet) -> IntervalSet {
        var result: [ClosedRange<UInt128>] = []
        var i = 0
        var j = 0
        while i < ranges.count, j < other.ranges.count {
            let a = ranges[i]
            let b = other.ranges[j]
            let low = max(a.lowerBound, b.lowerBound)
            let high = min(a.upperBound, b.upperBound)
            if low <= high { result.append(low...high) }
            if a.upperBound < b.upperBound { i += 1 } else { j += 1 }
        }
        return IntervalSet(ranges: result)
    }

    public func subtracting(_ other: IntervalSet) -> IntervalSet {
        var result: [ClosedRange<UInt128>] = []
        var j = 0
        for range in ranges {
            var low = range.lowerBound
            var done = false
            while j < other.ranges.count, other.ranges[j].upperBound < low { j += 1 }
            var k = j
            while k < other.ranges.count, other.ranges[k].lowerBound <= range.upperBound {
                let cut = other.ranges[k]
                if cut.lowerBound > low { result.append(low...(cut.lowerBound - 1)) }
                if cut.upperBound >= range.upperBound {
                    done = true
                    break
                }
                low = cut.upperBound + 1
                k += 1
            }
            if !done { result.append(low...range.upperBound) }
        }
        return IntervalSet(ranges: result)
    }

    public func union(_ other: IntervalSet) -> IntervalSet {
        IntervalSet(union: ranges + other.ranges)
    }

    /// Without building a set, and by binary search in the larger one: the comparisons
    /// run for every rule on every region, and a region's set may hold hundreds of ranges
    /// (every team's network but one).
    @inline(__always)
    func isSubset(of other: IntervalSet) -> Bool {
        var j = 0
        for range in ranges {
            // Ranges are not adjacent, so one of the other's ranges must hold it whole.
            j = other.firstEnding(atOrAfter: range.lowerBound, from: j)
            guard j < other.ranges.count, other.ranges[j].lowerBound <= range.lowerBound,
                other.ranges[j].upperBound >= range.upperBound
            else { return false }
        }
        return true
    }

    @inline(__always)
    func isDisjoint(with other: IntervalSet) -> Bool {
        ranges.withUnsafeBufferPointer { mine in
            other.ranges.withUnsafeBufferPointer { theirs in
                mine.count <= theirs.count ? Self.disjoint(mine, theirs) : Self.disjoint(theirs, mine)
            }
        }
    }

    /// Each of the few ranges looked up in the many by binary search.
    @inline(__always)
    private static func disjoint(_ few: UnsafeBufferPointer<ClosedRange<UInt128>>, _ many: UnsafeBufferPointer<ClosedRange<UInt128>>) -> Bool {
        var start = 0
        for range in few {
            var low = start
            var high = many.count
            while low < high {
                let middle = (low + high) / 2
                if many[middle].upperBound < range.lowerBound { low = middle + 1 } else { high = middle }
            }
            if low < many.count, many[low].lowerBound <= range.upperBound { return false }
            start = low
        }
        return true
    }

    /// The first range that ends at or after `value` (`ranges.count` if none does).
    @inline(__always)
    private func firstEnding(atOrAfter value: UInt128, from start: Int) -> Int {
        var low = start
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < value { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
