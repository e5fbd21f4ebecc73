/// A condition over the request space, evaluated on a whole region at once: it holds
/// everywhere there, nowhere, or the region must be split (and where). Rules, `ident`,
/// `group` and `limit` lines become conditions (`PolicyConditions`).
indirect enum Condition: Sendable {
    case always
    /// The dimension's value is in the set.
    case within(Dimension, IntervalSet)
    case all([Condition])
    case any([Condition])
    /// A predicate over a few finite dimensions, decided by trying every combination of
    /// their values in the region (each is a short list).
    case relation([Dimension], @Sendable (Point) -> Bool)
    /// Holds once `classify` gives one class over the whole region; else the region is
    /// split until it does. Makes what the engine answers beyond a match (which refusal,
    /// which limit counts) the same everywhere in a region.
    case uniform([Dimension], @Sendable (Point) -> Int)
    /// Holds once the inner condition is decided (holds everywhere or nowhere).
    case settled(Condition)
    /// Where the guard holds: the inner condition; where it does not: `whereNot`. A region
    /// the guard splits is split first, even where the inner condition holds nowhere:
    /// the engine checks in this order, and what it asked on the way (identd, the
    /// directory) must be the same all over a region.
    case guarded(Condition, then: Condition, whereNot: Bool)

    /// The conditions in the engine's order: each is looked at only where those before
    /// it hold (`guarded`).
    static func sequence(_ conditions: [Condition]) -> Condition {
        conditions.reversed().reduce(Condition.always) { rest, condition in .guarded(condition, then: rest, whereNot: false) }
    }

    /// Everywhere, nowhere, or split `dimension` into its values inside and outside `part`.
    enum Truth {
        case everywhere, nowhere
        case split(Dimension, IntervalSet)
    }

    /// The most value combinations a relation tries in one region; a larger region is
    /// split first (halving its largest finite dimension).
    static let mostCombinations = 4096

    func truth(in region: Region) -> Truth {
        switch self {
        case .always:
            return .everywhere
        case .within(let dimension, let set):
            let values = region[dimension]
            if values.isSubset(of: set) { return .everywhere }
            if values.isDisjoint(with: set) { return .nowhere }
            return .split(dimension, set)
        case .all(let conditions):
            var pending: Truth?
            for condition in conditions {
                switch condition.truth(in: region) {
                case .nowhere: return .nowhere
                case .everywhere: continue
                case .split(let dimension, let set): if pending == nil { pending = .split(dimension, set) }
                }
            }
            return pending ?? .everywhere
        case .any(let conditions):
            var pending: Truth?
            for condition in conditions {
                switch condition.truth(in: region) {
                case .everywhere: return .everywhere
                case .nowhere: continue
                case .split(let dimension, let set): if pending == nil { pending = .split(dimension, set) }
                }
            }
            return pending ?? .nowhere
        case .relation(let dimensions, let predicate):
            return Self.classes(of: dimensions, in: region) { predicate($0) ? 1 : 0 }.map { $0 == 1 ? .everywhere : .nowhere }
                ?? Self.splitFirst(dimensions, in: region)
        case .uniform(let dimensions, let classify):
            return Self.classes(of: dimensions, in: region, classify) != nil ? .everywhere : Self.splitFirst(dimensions, in: region)
        case .settled(let condition):
            if case .split(let dimension, let set) = condition.truth(in: region) { return .split(dimension, set) }
            return .everywhere
        case .guarded(let guardCondition, let then, let whereNot):
            switch guardCondition.truth(in: region) {
            case .nowhere: return whereNot ? .everywhere : .nowhere
            case .everywhere: return then.truth(in: region)
            case .split(let dimension, let set): return .split(dimension, set)
            }
        }
    }

    /// The one class `classify` gives every combination of the dimensions' values in the
    /// region; nil if they differ or there are too many combinations to try.
    private static func classes(of dimensions: [Dimension], in region: Region, _ classify: (Point) -> Int) -> Int? {
        var combinations = 1
        for dimension in dimensions {
            combinations *= region[dimension].count(upTo: mostCombinations + 1)
            if combinations > mostCombinations { return nil }
        }
        let values = dimensions.map { region[$0].values }
        var point = Point(region: region)
        var found: Int?
        func visit(_ depth: Int) -> Bool {
            if depth == dimensions.count {
                let value = classify(point)
                if found == nil { found = value }
                return found == value
            }
            for value in values[depth] {
                point.values[dimensions[depth].rawValue] = value
                if !visit(depth + 1) { return false }
            }
            return true
        }
        return visit(0) ? found : nil
    }

    /// Splits the largest of the dimensions: its first half apart.
    private static func splitFirst(_ dimensions: [Dimension], in region: Region) -> Truth {
        guard let dimension = dimensions.max(by: { region[$0].count(upTo: 1 << 20) < region[$1].count(upTo: 1 << 20) }),
            case let values = region[dimension].values, values.count > 1
        else { return .everywhere }  // not reached: one combination is one class
        return .split(dimension, IntervalSet(values: values.prefix(values.count / 2)))
    }
}

/// One value of each finite dimension (the numeric ones hold their region's first value).
struct Point {
    var values: [Int]

    init(region: Region) {
        values = region.sets.map { Int(truncatingIfNeeded: $0.first ?? 0) }
    }

    subscript(_ dimension: Dimension) -> Int {
        values[dimension.rawValue]
    }
}
