import NetAddress
import ProxyURL

/// Text forms of request facts, for `expect` lines and `identgate explain`.
public enum RequestText {
    /// `10.1.2.3`, `10.1.2.3:40000`, `::1`, `[::1]:40000`; the port defaults to 40000.
    public static func client(_ text: String) -> IPEndpoint? {
        if let endpoint = IPEndpoint(text) { return endpoint }
        return IPAddress(text).map { IPEndpoint(address: $0, port: 40000) }
    }

    /// `HOST:PORT` with an address or a host name; IPv6 in brackets.
    public static func destination(_ text: String) -> (RequestFacts.Destination, UInt16)? {
        if let endpoint = IPEndpoint(text) { return (.address(endpoint.address), endpoint.port) }
        guard let colon = text.lastIndex(of: ":"), !text.hasPrefix("["), let port = UInt16(text[text.index(after: colon)...])
        else {
            return nil
        }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":"), IPAddress(host) == nil,
            host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_") })
        else { return nil }
        return (.hostName(host), port)
    }

    /// `YYYY-MM-DDTHH:MM` as local time in the policy's zone, returned as the Unix time
    /// it would be at UTC; the engine adds the zone's offset back, so the pair is exact.
    public static func time(iso text: String) -> Int64? {
        let parts = text.split(separator: "T")
        guard parts.count == 2 else { return nil }
        let date = parts[0].split(separator: "-").compactMap { Int($0) }
        guard date.count == 3, (1...12).contains(date[1]), (1...31).contains(date[2]),
            let minutes = Parser.minutes(String(parts[1])), minutes < 1440
        else { return nil }
        return (daysFromCivil(year: date[0], month: date[1], day: date[2]) * 1440 + Int64(minutes)) * 60
    }

    /// A time in the week of Monday 2024-01-01, as `time(iso:)` counts it.
    static func time(weekday: Int, minutes: Int) -> Int64 {
        (daysFromCivil(year: 2024, month: 1, day: 1 + weekday) * 1440 + Int64(minutes)) * 60
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let m = Int64(month)
        let dayOfYear = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146097 + dayOfEra - 719468
    }
}

extension String {
    /// The line without its comment and surrounding spaces, for `explain`.
    var trimmedPolicyLine: String {
        var end = endIndex
        var inString = false
        for index in indices {
            if self[index] == "\"" { inString.toggle() }
            if self[index] == "#", !inString {
                end = index
                break
            }
        }
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        let text = self[..<end]
        guard let first = text.firstIndex(where: { !isSpace($0) }), let last = text.lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(text[first...last])
    }
}
