import AccessPolicy

/// A region where the policies differ, before it is put in words: one box of the request
/// space, or several that differ only in the destination ("to these names, or to these
/// addresses").
struct Found {
    var regions: [Region]
    var old: PolicyDiff.Side
    var new: PolicyDiff.Side
    var example: Example

    init(region: Region, old: PolicyDiff.Side, new: PolicyDiff.Side, example: Example, space: RequestSpace) {
        regions = Self.meaningful(region, space: space)
        self.old = old
        self.new = new
        self.example = example
    }

    static let destination: [Dimension] = [.destinationKind, .destinationName, .resolved, .destinationAddress]

    /// What a request's kind makes meaningless set to everything (a literal address has no
    /// name; a name not resolved, no address), so that such regions merge.
    static func normalized(_ region: Region, space: RequestSpace) -> Region {
        var region = region
        let everything = space.everything
        if region[.destinationKind].values == [0] {
            region[.destinationName] = everything[.destinationName]
            region[.resolved] = everything[.resolved]
        } else if region[.destinationKind].values == [1], region[.resolved].values == [0] {
            region[.destinationAddress] = everything[.destinationAddress]
        }
        return region
    }

    /// The region as boxes in which every destination dimension means something: names
    /// not resolved apart from names resolved, literal addresses apart from names.
    static func meaningful(_ region: Region, space: RequestSpace) -> [Region] {
        var parts: [Region] = []
        for kind in region[.destinationKind].values {
            var part = region
            part[.destinationKind] = IntervalSet(values: [kind])
            if kind == 1 {
                for resolved in region[.resolved].values {
                    var named = part
                    named[.resolved] = IntervalSet(values: [resolved])
                    parts.append(normalized(named, space: space))
                }
            } else {
                parts.append(normalized(part, space: space))
            }
        }
        return parts
    }

    /// Regions with the same two sides, merged: first where they differ on one dimension
    /// only, then where they differ only in the destination. As few rows as the split allows.
    static func merged(_ found: [Found]) -> [Found] {
        var groups: [[Found]] = []
        var groupOf: [[PolicyDiff.Side]: Int] = [:]
        for item in found {
            let key = [item.old, item.new]
            if let index = groupOf[key] {
                groups[index].append(item)
            } else {
                groupOf[key] = groups.count
                groups.append([item])
            }
        }
        return groups.flatMap { group in
            // One box each, merged on single dimensions; then boxes that differ only in
            // the destination become one row with several destinations.
            let boxes = mergedBoxes(group.flatMap(\.regions))
            var rows: [Found] = []
            var rowOf: [[IntervalSet]: Int] = [:]
            for box in boxes {
                var key = box.sets
                for dimension in destination { key[dimension.rawValue] = .empty }
                if let index = rowOf[key] {
                    rows[index].regions.append(box)
                } else {
                    rowOf[key] = rows.count
                    var row = group[0]
                    row.regions = [box]
                    rows.append(row)
                }
            }
            return rows
        }
    }

    /// Boxes merged dimension by dimension while any two are alike on every other
    /// dimension; each pass is linear (a dictionary keyed by the other dimensions).
    private static func mergedBoxes(_ boxes: [Region]) -> [Region] {
        var boxes = boxes
        var merging = true
        while merging {
            merging = false
            for dimension in Dimension.allCases {
                var merged: [Region] = []
                var indexOf: [[IntervalSet]: Int] = [:]
                for box in boxes {
                    var key = box.sets
                    key[dimension.rawValue] = .empty
                    if let index = indexOf[key] {
                        merged[index][dimension] = merged[index][dimension].union(box[dimension])
                        merging = true
                    } else {
                        indexOf[key] = merged.count
                        merged.append(box)
                    }
                }
                boxes = merged
            }
        }
        return boxes
    }

    func difference(space: RequestSpace, old: Policy, new: Policy) -> PolicyDiff.Difference {
        let text = RegionText(space: space, policies: [old, new])
        var parts = text.describe(regions[0])
        parts["to"] = text.destinations(regions)
        return PolicyDiff.Difference(
            region: parts, old: self.old, new: self.new,
            oldExample: text.explainOptions(example, zone: old.utcOffsetSeconds),
            newExample: text.explainOptions(example, zone: new.utcOffsetSeconds), boxes: regions)
    }
}
