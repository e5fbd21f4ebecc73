import ArgumentParser
import Logging
import NIOCore
import NetAddress

/// `HOST:PORT` with a literal address; IPv6 in brackets.
struct ListenAddress: ExpressibleByArgument {
    var endpoint: IPEndpoint

    init?(argument: String) {
        guard let endpoint = IPEndpoint(argument) else { return nil }
        self.endpoint = endpoint
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A duration with a unit: `500ms`, `30s`, `2m`, `1h`; a bare number is seconds.
struct DurationArgument: ExpressibleByArgument, ExpressibleByStringLiteral, CustomStringConvertible {
    var amount: TimeAmount
    var description: String

    init?(argument: String) {
        let units: [(suffix: String, nanoseconds: Int64)] = [
            ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
        ]
        var number = Substring(argument)
        var scale: Int64 = 1_000_000_000
        if let unit = units.first(where: { argument.hasSuffix($0.suffix) }) {
            number = number.dropLast(unit.suffix.count)
            scale = unit.nanoseconds
        }
        guard !number.isEmpty, number.allSatisfy(\.isASCII), let value = Int64(number), value >= 0,
            value <= Int64.max / scale
        else { return nil }
        self.amount = .nanoseconds(value * scale)
        self.description = argument
    }

    init(stringLiteral value: String) {
        self.init(argument: value)!
    }

    var defaultValueDescription: String { description }
}

/// swift-log's levels by name.
struct LogLevelArgument: ExpressibleByArgument {
    var level: Logger.Level

    init?(argument: String) {
        guard let level = Logger.Level(rawValue: argument) else { return nil }
        self.level = level
    }

    init(_ level: Logger.Level) { self.level = level }

    var defaultValueDescription: String { level.rawValue }
    static var allValueStrings: [String] { Logger.Level.allCases.map(\.rawValue) }
}
