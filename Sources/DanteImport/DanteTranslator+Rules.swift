import NetAddress
import PolicyDiff

/// Dante's `from:` and `to:`: an address with a mask, a name, a domain or an interface,
/// and ports (`port = 80`, `port > 1023`, `port 1 - 1023`).
struct DanteEndpoint {
    enum Address {
        case any
        case networks([IPNetwork])
        case hostName(String)
        case domain(String)
    }

    var address: Address
    /// nil: any port.
    var ports: [ClosedRange<Int>]?

    /// The identgate words for the address (`10.0.0.0/8`, `.example.com`); nil for any.
    var addressWords: String? {
        switch address {
        case .any: nil
        case .networks(let networks): networks.map(\.description).joined(separator: ", ")
        case .hostName(let name): name
        case .domain(let domain): "." + domain
        }
    }

    var portWords: String? {
        ports.map { ranges in ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ", ") }
    }
}

extension DanteTranslator {
    // MARK: Addresses and ports

    /// The endpoint, or nil with a warning when identgate cannot say it.
    mutating func endpoint(_ values: [String], line: Int, key: String) -> DanteEndpoint? {
        guard let first = values.first else {
            warnings.append("\(file):\(line): warning: \(key): no address")
            return nil
        }
        let address: DanteEndpoint.Address
        if first == "0/0" {
            address = .any  // Dante's "any address", both families
        } else if let network = Self.network(first) {
            address = .networks([network])
        } else if first.hasPrefix(".") {
            address = .domain(String(first.dropFirst()).lowercased())
        } else if first.contains(".") {
            address = .hostName(first.lowercased())
        } else if first == "lo" || first == "lo0" {
            address = .networks([IPNetwork("127.0.0.0/8"), IPNetwork("::1/128")].compactMap { $0 })
        } else {
            warn(line, "\(key) \(first): an interface name; identgate names addresses (rule left out)")
            return nil
        }
        var endpoint = DanteEndpoint(address: address)
        if let index = values.firstIndex(of: "port") {
            guard let ports = ports(Array(values[(index + 1)...]), line: line) else { return nil }
            endpoint.ports = ports
        }
        return endpoint
    }

    /// `10.0.0.0/8`, `10.0.0.0/255.0.0.0`, `10.1.2.3` (one host), `fd00::/8`.
    static func network(_ text: String) -> IPNetwork? {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let address = IPAddress(parts[0]) else { return nil }
        if parts.count == 1 { return IPNetwork(address: address, prefixLength: address.isIPv6 ? 128 : 32) }
        if let length = Int(parts[1]) { return IPNetwork(address: address, prefixLength: length) }
        // A dotted mask: its leading ones.
        guard case .v4(let mask)? = IPAddress(parts[1]) else { return nil }
        let length = mask.value.leadingZeroBitCount == 0 ? (~mask.value).leadingZeroBitCount : 0
        guard mask.value == (length == 0 ? 0 : UInt32.max << (32 - length)) else { return nil }
        return IPNetwork(address: address, prefixLength: length)
    }

    /// `= 80`, `eq http`, `> 1023`, `!= 25`, `1 - 1023`, `1-1023`.
    mutating func ports(_ words: [String], line: Int) -> [ClosedRange<Int>]? {
        var words = words
        // The tokenizer splits '=' off: ">" "=" is ">=".
        if words.count > 1, ["<", ">", "!"].contains(words[0]), words[1] == "=" { words = [words[0] + "="] + words.dropFirst(2) }
        func number(_ word: String?) -> Int? {
            guard let word else { return nil }
            if let value = Int(word), (0...65535).contains(value) { return value }
            return servicePort(word)
        }
        let op = words.first ?? ""
        if let low = number(op), words.count >= 3, words[1] == "-", let high = number(words[2]), low <= high { return [low...high] }
        if op.contains("-"), case let bounds = op.split(separator: "-"), bounds.count == 2, let low = number(String(bounds[0])),
            let high = number(String(bounds[1])), low <= high
        {
            return [low...high]
        }
        guard let value = number(words.dropFirst().first) else {
            warn(line, "port \(words.joined(separator: " ")): not a port (rule left out)")
            return nil
        }
        switch op {
        case "=", "eq": return [value...value]
        case "!=", "ne": return (value > 0 ? [0...(value - 1)] : []) + (value < 65535 ? [(value + 1)...65535] : [])
        case "<", "lt": return value == 0 ? nil : [0...(value - 1)]
        case "<=", "le": return [0...value]
        case ">", "gt": return value == 65535 ? nil : [(value + 1)...65535]
        case ">=", "ge": return [value...65535]
        default:
            warn(line, "port \(words.joined(separator: " ")): not a port operator (rule left out)")
            return nil
        }
    }

}
