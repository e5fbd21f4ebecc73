import Foundation

/// The reading half of the hand-written JSON: the review commands read every record of
/// logs with millions of lines, and JSONDecoder costs several times more per line.
/// Any valid JSON object with the record's keys, in any order, is read; for anything it
/// does not know (another key, a value of another type, a number out of range) it gives
/// nil and the caller falls back to JSONDecoder, so it never reads a line differently.
/// A test checks the two agree.
extension AuditRecord {
    public init?(jsonLine line: Data) {
        let parsed: AuditRecord?? = line.withUnsafeBytes { bytes in
            var reader = JSONLineReader(bytes: bytes)
            return reader.record()
        }
        guard let record = parsed ?? nil else { return nil }
        self = record
    }

    /// The record on one log line: read by hand, else by `decoder`; nil if neither can.
    public static func decode(line: Data, fallback decoder: JSONDecoder) -> AuditRecord? {
        AuditRecord(jsonLine: line) ?? (try? decoder.decode(AuditRecord.self, from: line))
    }
}

private struct JSONLineReader {
    let bytes: UnsafeRawBufferPointer
    var index = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func record() -> AuditRecord? {
        var v: Int?
        var seq: UInt64?
        var time: String?
        var event: AuditRecord.Event?
        var prev: String?
        var record = AuditRecord(event: .decision)
        let complete = object { key, reader in
            switch key {
            case "v": return reader.integer(into: &v)
            case "seq": return reader.integer(into: &seq)
            case "time": return reader.string(into: &time)
            case "prev": return reader.string(into: &prev)
            case "event":
                var name: String?
                guard reader.string(into: &name) else { return false }
                event = name.flatMap(AuditRecord.Event.init(rawValue:))
                return event != nil || name == nil
            case "seed": return reader.string(into: &record.seed)
            case "previousFile": return reader.string(into: &record.previousFile)
            case "version": return reader.string(into: &record.version)
            case "listen": return reader.strings(into: &record.listen)
            case "policyFile": return reader.string(into: &record.policyFile)
            case "policySHA256": return reader.string(into: &record.policySHA256)
            case "rules": return reader.integer(into: &record.rules)
            case "tests": return reader.integer(into: &record.tests)
            case "reason": return reader.string(into: &record.reason)
            case "httpMethod": return reader.string(into: &record.httpMethod)
            case "passwordSource": return reader.string(into: &record.passwordSource)
            case "groupsUser": return reader.string(into: &record.groupsUser)
            case "groups": return reader.strings(into: &record.groups)
            case "groupsNote": return reader.string(into: &record.groupsNote)
            case "httpTarget": return reader.string(into: &record.httpTarget)
            case "user": return reader.string(into: &record.user)
            case "verified": return reader.string(into: &record.verified)
            case "session": return reader.integer(into: &record.session)
            case "client": return reader.string(into: &record.client)
            case "listener": return reader.string(into: &record.listener)
            case "balancer": return reader.string(into: &record.balancer)
            case "instance": return reader.string(into: &record.instance)
            case "keyID": return reader.string(into: &record.keyID)
            case "signature": return reader.string(into: &record.signature)
            case "socks": return reader.string(into: &record.socks)
            case "command": return reader.string(into: &record.command)
            case "destination": return reader.string(into: &record.destination)
            case "destinationPort": return reader.integer(into: &record.destinationPort)
            case "resolved": return reader.string(into: &record.resolved)
            case "claimedUser": return reader.string(into: &record.claimedUser)
            case "auth": return reader.string(into: &record.auth)
            case "authOutcome": return reader.string(into: &record.authOutcome)
            case "gssMechanism": return reader.string(into: &record.gssMechanism)
            case "protection": return reader.string(into: &record.protection)
            case "ident": return reader.ident(into: &record.ident)
            case "ruleLine": return reader.integer(into: &record.ruleLine)
            case "ruleLabel": return reader.string(into: &record.ruleLabel)
            case "limitLine": return reader.integer(into: &record.limitLine)
            case "route": return reader.strings(into: &record.route)
            case "parent": return reader.string(into: &record.parent)
            case "limitLabel": return reader.string(into: &record.limitLabel)
            case "verdict": return reader.string(into: &record.verdict)
            case "reply": return reader.integer(into: &record.reply)
            case "requestTime": return reader.integer(into: &record.requestTime)
            case "bytesFromClient": return reader.integer(into: &record.bytesFromClient)
            case "bytesToClient": return reader.integer(into: &record.bytesToClient)
            case "durationMs": return reader.integer(into: &record.durationMs)
            default: return false
            }
        }
        skipWhitespace()
        // The keys JSONDecoder requires (no default is taken from the type).
        guard complete, index == bytes.count, let v, let seq, let time, let event, let prev else { return nil }
        record.v = v
        record.seq = seq
        record.time = time
        record.event = event
        record.prev = prev
        return record
    }

    private mutating func ident(into target: inout AuditRecord.IdentRecord?) -> Bool {
        if literal("null") { return true }
        var outcome: String?
        var ident = AuditRecord.IdentRecord(outcome: "")
        let complete = object { key, reader in
            switch key {
            case "outcome": return reader.string(into: &outcome)
            case "userID": return reader.string(into: &ident.userID)
            case "opsys": return reader.string(into: &ident.opsys)
            case "raw": return reader.string(into: &ident.raw)
            case "detail": return reader.string(into: &ident.detail)
            case "durationMs": return reader.integer(into: &ident.durationMs)
            default: return false
            }
        }
        guard complete, let outcome else { return false }
        ident.outcome = outcome
        target = ident
        return true
    }

    /// `{ "key": value, … }`, each value read by `field`; false on anything else.
    private mutating func object(_ field: (String, inout JSONLineReader) -> Bool) -> Bool {
        skipWhitespace()
        guard take(UInt8(ascii: "{")) else { return false }
        skipWhitespace()
        if take(UInt8(ascii: "}")) { return true }
        var seen: Set<String> = []
        while true {
            skipWhitespace()
            // A key given twice: JSONDecoder's choice is not ours to guess.
            guard let key = string(), seen.insert(key).inserted else { return false }
            skipWhitespace()
            guard take(UInt8(ascii: ":")) else { return false }
            skipWhitespace()
            guard field(key, &self) else { return false }
            skipWhitespace()
            if take(UInt8(ascii: ",")) { continue }
            return take(UInt8(ascii: "}"))
        }
    }

    private mutating func strings(into target: inout [String]?) -> Bool {
        if literal("null") { return true }
        guard take(UInt8(ascii: "[")) else { return false }
        var values: [String] = []
        skipWhitespace()
        if !take(UInt8(ascii: "]")) {
            while true {
                skipWhitespace()
                guard let value = string() else { return false }
                values.append(value)
                skipWhitespace()
                if take(UInt8(ascii: ",")) { continue }
                guard take(UInt8(ascii: "]")) else { return false }
                break
            }
        }
        target = values
        return true
    }

    private mutating func string(into target: inout String?) -> Bool {
        if literal("null") { return true }
        guard let value = string() else { return false }
        target = value
        return true
    }

    /// An integer that fits the field's type; fractions and exponents are left to
    /// JSONDecoder.
    private mutating func integer<Number: FixedWidthInteger>(into target: inout Number?) -> Bool {
        if literal("null") { return true }
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") {
            // A negative number for an unsigned field (even -0): JSONDecoder decides.
            guard Number.isSigned else { return false }
            index += 1
        }
        let digitsStart = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        guard index > digitsStart, index == digitsStart + 1 || bytes[digitsStart] != UInt8(ascii: "0") else { return false }
        if index < bytes.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[index]) {
            return false
        }
        guard let value = Number(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self))
        else { return false }
        target = value
        return true
    }

    /// A JSON string; escapes decoded, invalid UTF-8 or a bare control character refused.
    private mutating func string() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        let start = index
        // The common case: no escapes, copied at once.
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 {
            index += 1
        }
        guard index < bytes.count else { return nil }
        if bytes[index] == UInt8(ascii: "\"") {
            let run = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
            index += 1
            return String(validating: run, as: UTF8.self)
        }
        var text = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(validating: text, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { return nil }
                let escaped = bytes[index]
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escaped)
                case UInt8(ascii: "b"): text.append(0x08)
                case UInt8(ascii: "f"): text.append(0x0C)
                case UInt8(ascii: "n"): text.append(0x0A)
                case UInt8(ascii: "r"): text.append(0x0D)
                case UInt8(ascii: "t"): text.append(0x09)
                case UInt8(ascii: "u"):
                    guard let scalar = unicodeEscape() else { return nil }
                    text.append(contentsOf: String(Character(scalar)).utf8)
                default: return nil
                }
            case 0..<0x20:
                return nil
            default:
                text.append(byte)
            }
        }
        return nil
    }

    /// After `\u`: four hex digits, or a surrogate pair written as two escapes.
    private mutating func unicodeEscape() -> Unicode.Scalar? {
        guard let first = hex4() else { return nil }
        if (0xD800..<0xDC00).contains(first) {
            guard literal("\\u"), let second = hex4(), (0xDC00..<0xE000).contains(second) else { return nil }
            return Unicode.Scalar(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
        }
        return Unicode.Scalar(first)
    }

    private mutating func hex4() -> UInt32? {
        guard index + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = Character(Unicode.Scalar(bytes[index])).hexDigitValue else { return nil }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    private mutating func literal(_ text: StaticString) -> Bool {
        let count = text.utf8CodeUnitCount
        guard index + count <= bytes.count else { return false }
        for offset in 0..<count where bytes[index + offset] != text.utf8Start[offset] { return false }
        index += count
        return true
    }

    private mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }
}
