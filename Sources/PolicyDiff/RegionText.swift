import AccessPolicy
import NetAddress

/// Regions and examples in words, as a policy author writes them.
struct RegionText {
    let space: RequestSpace
    /// Whether either policy asks identd, names groups, or has time windows: only then do
    /// those parts of a request matter, and only then are they printed.
    let usesIdent: Bool
    let usesGroups: Bool
    let usesTime: Bool

    /// The order of a row's parts.
    static let order = ["command", "version", "auth", "from", "to", "port", "user", "ident", "groups", "at"]

    init(space: RequestSpace, policies: [Policy]) {
        self.space = space
        let rules = policies.flatMap { $0.rules + $0.limits.map(\.conditions) }
        usesIdent = rules.contains(where: \.requiresIdent)
        usesGroups = rules.contains { $0.groups != nil }
        usesTime = rules.contains { $0.times != nil }
    }

    func describe(_ region: Region) -> [String: String] {
        let full = space.everything
        var parts: [String: String] = [:]
        func listed<Value>(_ dimension: Dimension, _ all: [Value], _ name: (Value) -> String) {
            guard region[dimension] != full[dimension] else { return }
            parts[Self.key(dimension)] = region[dimension].values.map { name(all[$0]) }.joined(separator: ", ")
        }
        listed(.command, RequestFacts.Command.allCases, \.rawValue)
        listed(.version, RequestFacts.Version.allCases, \.rawValue)
        listed(.auth, RequestFacts.AuthMethod.allCases, \.rawValue)
        if region[.client] != full[.client] { parts["from"] = Self.addresses(region[.client]) }
        if let destination = destination(region, full) { parts["to"] = destination }
        if region[.port] != full[.port] {
            parts["port"] = region[.port].ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
                .joined(separator: ", ")
        }
        listed(.user, space.users) { $0.map { $0 == RequestSpace.otherUser ? "any other user" : $0 } ?? "no user" }
        if usesIdent {
            listed(.ident, IdentAnswerKind.allCases) { kind in
                switch kind {
                case .fails: "identd: no answer"
                case .claimedName: "identd: the claimed user"
                case .shortName: "identd: the claimed user's short name"
                case .otherUser: "identd: another user"
                }
            }
        }
        if usesGroups, region[.directory] != full[.directory] || region[.groups] != full[.groups] {
            var words: [String] = []
            if region[.directory].contains(1) { words.append("the directory does not answer") }
            if region[.directory].contains(0), region[.groups] != full[.groups] {
                words += region[.groups].values.map { mask in
                    let names = space.groups.indices.filter { mask & 1 << $0 != 0 }.map { space.groups[$0] }
                    return names.isEmpty ? "in no named group" : "in " + names.joined(separator: "+")
                }
            }
            parts["groups"] = words.joined(separator: " or ")
        }
        if usesTime, region[.time] != full[.time] { parts["at"] = Self.minutes(region[.time]) }
        return parts
    }

    /// A row's parts in order, as one line: "version socks4 from 10.0.0.0/8 to any :22".
    static func line(_ parts: [String: String]) -> String {
        let words = order.compactMap { key -> String? in
            guard let value = parts[key] else { return nil }
            return key == "port" ? ":\(value)" : "\(key) \(value)"
        }
        return words.isEmpty ? "every request" : words.joined(separator: " ")
    }

    private static func key(_ dimension: Dimension) -> String {
        switch dimension {
        case .client: "from"
        case .user: "user"
        case .ident: "ident"
        default: "\(dimension)"
        }
    }

    private func destination(_ region: Region, _ full: Region) -> String? {
        let kinds = region[.destinationKind].values
        let addresses = region[.destinationAddress] == full[.destinationAddress] ? nil : Self.addresses(region[.destinationAddress])
        var words: [String] = []
        if kinds.contains(0) { words.append(addresses ?? "any address") }
        if kinds.contains(1) {
            var names = self.names(region[.destinationName], full[.destinationName])
            switch region[.resolved].values {
            case [0]: names += " (not resolved)"
            case [1]: names += addresses.map { " (resolved to \($0))" } ?? " (resolved)"
            default: if let addresses { names += " (not resolved, or resolved to \(addresses))" }
            }
            words.append(names)
        }
        let text = words.joined(separator: " or ")
        return text == "any address or any name" ? nil : text
    }

    /// The destinations of boxes that differ only there, names first: "any name but
    /// .tracker.example (not resolved, or resolved to 192.0.2.0/24); or 192.0.2.0/24".
    /// nil when they are every destination.
    func destinations(_ boxes: [Region]) -> String? {
        let full = space.everything
        var names: [(set: IntervalSet, unresolved: Bool, resolved: [IntervalSet])] = []
        var addresses: [IntervalSet] = []
        for box in boxes {
            for kind in box[.destinationKind].values {
                if kind == 0 {
                    addresses.append(box[.destinationAddress])
                    continue
                }
                let index = names.firstIndex { $0.set == box[.destinationName] } ?? {
                    names.append((box[.destinationName], false, []))
                    return names.count - 1
                }()
                for resolved in box[.resolved].values {
                    if resolved == 0 { names[index].unresolved = true } else { names[index].resolved.append(box[.destinationAddress]) }
                }
            }
        }
        var words: [String] = []
        for entry in names {
            let resolvedTo = entry.resolved.reduce(IntervalSet.empty) { $0.union($1) }
            var text = self.names(entry.set, full[.destinationName])
            switch (entry.unresolved, resolvedTo.isEmpty, resolvedTo == full[.destinationAddress]) {
            case (true, false, true): break
            case (true, true, _): text += " (not resolved)"
            case (true, false, false): text += " (not resolved, or resolved to \(Self.addresses(resolvedTo)))"
            case (false, _, true): text += " (resolved)"
            case (false, _, false): text += " (resolved to \(Self.addresses(resolvedTo)))"
            }
            words.append(text)
        }
        let literal = addresses.reduce(IntervalSet.empty) { $0.union($1) }
        if !literal.isEmpty {
            words.append(literal == full[.destinationAddress] ? "any address" : Self.addresses(literal).replacingPrefix("any but", with: "any address but"))
        }
        let text = words.joined(separator: "; or ")
        return text == "any name; or any address" ? nil : text
    }

    /// Kinds of host names as a rule would name them: `.example.com` for a domain and
    /// every name below it, a name alone, or "any name but …" when that is shorter.
    private func names(_ set: IntervalSet, _ full: IntervalSet) -> String {
        func words(_ indices: [Int]) -> [String] {
            let chosen = Set(indices)
            var words: [String] = []
            for index in indices {
                switch space.names[index] {
                case .unnamed: words.append("a name no rule names")
                case .exactly(let name):
                    // A domain with everything below it reads as the rule wrote it.
                    if let below = space.names.firstIndex(of: .below(name)), chosen.contains(below) {
                        words.append("." + name)
                    } else {
                        words.append(name)
                    }
                case .below(let domain):
                    if let exact = space.names.firstIndex(of: .exactly(domain)), chosen.contains(exact) { continue }
                    words.append("other names under .\(domain)")
                }
            }
            return words
        }
        if set == full { return "any name" }
        let inside = words(set.values)
        let outside = words(full.subtracting(set).values)
        return outside.count < inside.count ? "any name but " + outside.joined(separator: ", ") : inside.joined(separator: ", ")
    }

    /// Addresses as CIDR blocks, or as "any but …" when that is shorter.
    static func addresses(_ set: IntervalSet) -> String {
        let blocks = cidrs(set)
        let complement = cidrs(IntervalSet(0...UInt128.max).subtracting(set))
        func shown(_ blocks: [String]) -> String {
            blocks.count <= 6 ? blocks.joined(separator: ", ") : blocks.prefix(6).joined(separator: ", ") + " and \(blocks.count - 6) more"
        }
        return complement.count < blocks.count ? "any but \(shown(complement))" : shown(blocks)
    }

    /// The fewest CIDR blocks that make up the set, IPv4 ones as IPv4.
    static func cidrs(_ set: IntervalSet) -> [String] {
        var blocks: [String] = []
        // The IPv4-mapped block apart, so that no block straddles it.
        let parts = [set.subtracting(mappedIPv4), set.intersection(mappedIPv4)]
        for range in parts.flatMap(\.ranges) {
            var low = range.lowerBound
            let high = range.upperBound
            while true {
                // The largest aligned block at `low` that ends by `high`: 2^size addresses.
                var size = 0
                while size < 128 {
                    let next = size + 1
                    if next == 128 {
                        if low == 0, high == .max { size = 128 }
                        break
                    }
                    let length = UInt128(1) << UInt128(next)
                    guard low % length == 0, high - low >= length - 1 else { break }
                    size = next
                }
                blocks.append(cidr(low, size: size))
                let last = size == 128 ? UInt128.max : low + ((UInt128(1) << UInt128(size)) - 1)
                if last >= high { break }
                low = last + 1
            }
        }
        return blocks
    }

    private static func cidr(_ low: UInt128, size: Int) -> String {
        if mappedIPv4.contains(low), size <= 32 {
            return "\(IPv4Address(UInt32(truncatingIfNeeded: low)))/\(32 - size)"
        }
        let address = IPv6Address(high: UInt64(truncatingIfNeeded: low >> 64), low: UInt64(truncatingIfNeeded: low))
        return "\(address)/\(128 - size)"
    }

    /// UTC minutes of the week as day and time ranges: "mon 08:00-fri 17:59 UTC".
    static func minutes(_ set: IntervalSet) -> String {
        let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        func clock(_ minute: UInt128) -> String {
            let value = Int(minute)
            let hour = value % 1440 / 60
            let minutes = value % 60
            return "\(days[value / 1440]) \(hour < 10 ? "0" : "")\(hour):\(minutes < 10 ? "0" : "")\(minutes)"
        }
        return set.ranges.map { "\(clock($0.lowerBound))-\(clock($0.upperBound))" }.joined(separator: ", ") + " UTC"
    }

    /// The `identgate explain` options that pose the example, with `--at` in the zone of
    /// the policy it is for.
    func explainOptions(_ example: Example, zone: Int) -> [String] {
        let facts = example.facts
        var options = ["--from", "\(facts.client.address)", "--to", "\(facts.destinationHostPort)"]
        if facts.command != .connect { options += ["--command", facts.command.rawValue] }
        options += ["--version", facts.version.rawValue]
        if let user = facts.claimedUser { options += ["--user", user] }
        if facts.authMethod != .none { options += ["--auth", facts.authMethod.rawValue] }
        if let resolved = facts.resolvedAddress { options += ["--resolved", "\(resolved)"] }
        if usesIdent {
            if case .userID(let user) = example.ident.outcome { options += ["--ident", user] } else { options += ["--ident-error", "unreachable"] }
        }
        if usesGroups {
            switch example.groups {
            case .unavailable: options.append("--groups-unavailable")
            case .member(let groups) where !groups.isEmpty: options += ["--groups", groups.sorted().joined(separator: ",")]
            default: break
            }
        }
        if usesTime, let time = facts.time {
            options += ["--at", Self.iso(time + Int64(zone))]
        }
        return options
    }

    /// `YYYY-MM-DDTHH:MM` of a Unix time (UTC), as `explain --at` reads it.
    static func iso(_ time: Int64) -> String {
        let minutes = time / 60
        let days = minutes / 1440
        // Howard Hinnant's civil-from-days.
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let dayOfEra = z - era * 146097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)-\(two(month))-\(two(day))T\(two(minutes % 1440 / 60)):\(two(minutes % 60))"
    }
}

extension String {
    fileprivate func replacingPrefix(_ prefix: String, with replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}

extension RequestFacts {
    /// `HOST:PORT` as `explain --to` reads it, IPv6 in brackets.
    var destinationHostPort: String {
        switch destination {
        case .address(.v6(let address)): "[\(address)]:\(destinationPort)"
        default: "\(destination):\(destinationPort)"
        }
    }
}
