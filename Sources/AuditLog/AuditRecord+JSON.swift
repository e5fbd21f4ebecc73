/// A hand-written JSON encoder for audit records: the writer encodes every record, and
/// Foundation's JSONEncoder costs several times more per record. Keys are written in
/// sorted order, absent optionals left out, strings escaped as RFC 8259 requires.
/// `JSONDecoder` reads the result; a test checks the two agree.
extension AuditRecord {
    func writeJSON(to out: inout [UInt8]) {
        // The writer takes the caller's buffer (not a copy of it) and gives it back.
        var writer = JSONObjectWriter()
        swap(&writer.out, &out)
        writer.openObject()
        writer.field("auth", auth)
        writer.field("authOutcome", authOutcome)
        writer.field("balancer", balancer)
        writer.field("bytesFromClient", bytesFromClient)
        writer.field("bytesToClient", bytesToClient)
        writer.field("claimedUser", claimedUser)
        writer.field("client", client)
        writer.field("command", command)
        writer.field("destination", destination)
        writer.field("destinationPort", destinationPort.map(UInt64.init))
        writer.field("durationMs", durationMs.map(Int64.init))
        writer.field("event", event.rawValue)
        writer.field("gssMechanism", gssMechanism)
        if let ident {
            writer.key("ident")
            writer.openObject()
            writer.field("detail", ident.detail)
            writer.field("durationMs", ident.durationMs.map(Int64.init))
            writer.field("opsys", ident.opsys)
            writer.field("outcome", ident.outcome)
            writer.field("raw", ident.raw)
            writer.field("userID", ident.userID)
            writer.closeObject()
        }
        writer.field("instance", instance)
        writer.field("keyID", keyID)
        writer.field("limitLabel", limitLabel)
        writer.field("limitLine", limitLine.map(Int64.init))
        writer.field("listen", listen)
        writer.field("listener", listener)
        writer.field("parent", parent)
        writer.field("policyFile", policyFile)
        writer.field("policySHA256", policySHA256)
        writer.field("prev", prev)
        writer.field("protection", protection)
        writer.field("previousFile", previousFile)
        writer.field("reason", reason)
        writer.field("reply", reply.map(Int64.init))
        writer.field("requestTime", requestTime)
        writer.field("resolved", resolved)
        writer.field("ruleLabel", ruleLabel)
        writer.field("ruleLine", ruleLine.map(Int64.init))
        writer.field("route", route)
        writer.field("rules", rules.map(Int64.init))
        writer.field("seed", seed)
        writer.field("seq", seq)
        writer.field("session", session)
        writer.field("signature", signature)
        writer.field("socks", socks)
        writer.field("tests", tests.map(Int64.init))
        writer.field("time", time)
        writer.field("user", user)
        writer.field("v", Int64(v))
        writer.field("verdict", verdict)
        writer.field("verified", verified)
        writer.field("version", version)
        writer.closeObject()
        swap(&writer.out, &out)
    }
}

/// JSON string literals as the audit log writes them (RFC 8259, and DEL), for the other
/// JSON the gateway prints (`--log-format json`).
public enum JSONText {
    public static func quoted(_ text: String) -> String {
        var writer = JSONObjectWriter()
        writer.string(text)
        return String(decoding: writer.out, as: UTF8.self)
    }

    /// JSON text from another serializer (Foundation's leaves them raw) with the
    /// characters a terminal or a line reader would act on escaped as `\uXXXX`: C1
    /// controls (U+009B is a CSI to many terminals), the line separators U+2028/2029
    /// and the bidirectional controls. They can only be inside strings, where the escape
    /// means the same character.
    public static func escapingInvisibles(_ json: String) -> String {
        guard json.unicodeScalars.contains(where: isInvisible) else { return json }
        var out = String.UnicodeScalarView()
        for scalar in json.unicodeScalars {
            if isInvisible(scalar) {
                let hex = String(scalar.value, radix: 16)
                out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
            } else {
                out.append(scalar)
            }
        }
        return String(out)
    }

    /// What `DisplayText` escapes beyond ASCII (ASCII's controls JSON escapes itself).
    static func isInvisible(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value >= 0x80 && DisplayText.needsEscape(scalar)
    }
}

private struct JSONObjectWriter {
    var out: [UInt8] = []
    /// No field written yet in the object being written (no comma before the next key).
    private var first = true

    mutating func openObject() {
        out.append(UInt8(ascii: "{"))
        first = true
    }

    mutating func closeObject() {
        out.append(UInt8(ascii: "}"))
        first = false
    }

    mutating func key(_ name: String) {
        if !first { out.append(UInt8(ascii: ",")) }
        first = false
        string(name)
        out.append(UInt8(ascii: ":"))
    }

    mutating func field(_ name: String, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    mutating func field(_ name: String, _ value: UInt64?) {
        guard let value else { return }
        key(name)
        out.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: String, _ value: Int64?) {
        guard let value else { return }
        key(name)
        out.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: String, _ values: [String]?) {
        guard let values else { return }
        key(name)
        out.append(UInt8(ascii: "["))
        for (index, value) in values.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            string(value)
        }
        out.append(UInt8(ascii: "]"))
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// Copies the string in runs between the bytes that need escaping: most audit strings
    /// (addresses, names, digests) have none and go in with one copy.
    mutating func string(_ value: String) {
        out.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { bytes in
            var runStart = 0
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                // U+2028 and U+2029 (E2 80 A8/A9) are valid in JSON but end a line for
                // many line readers (JavaScript, Python's splitlines): escaped too.
                // So are the C1 controls (C2 80-9F; U+009B is a CSI to many terminals) and
                // the bidirectional controls: valid JSON, but not text to print raw.
                let invisible = Self.invisibleScalar(bytes, at: index)
                guard Self.needsEscape(byte) || invisible != nil else {
                    index += 1
                    continue
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
                if let (scalar, length) = invisible {
                    let hex = String(scalar, radix: 16)
                    out += Array(("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).utf8)
                    index += length
                } else {
                    escape(byte)
                    index += 1
                }
                runStart = index
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart...]))
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The scalar and its UTF-8 length, if the bytes at `index` encode one that
    /// `JSONText.isInvisible` names (all are two or three bytes long).
    private static func invisibleScalar(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> (UInt32, Int)? {
        let byte = bytes[index]
        guard byte == 0xC2 || byte == 0xD8 || byte == 0xE2 else { return nil }
        if byte != 0xE2 {
            guard index + 1 < bytes.count else { return nil }
            let scalar = (UInt32(byte & 0x1F) << 6) | UInt32(bytes[index + 1] & 0x3F)
            return Unicode.Scalar(scalar).map(JSONText.isInvisible) == true ? (scalar, 2) : nil
        }
        guard index + 2 < bytes.count else { return nil }
        let scalar = (UInt32(byte & 0x0F) << 12) | (UInt32(bytes[index + 1] & 0x3F) << 6) | UInt32(bytes[index + 2] & 0x3F)
        return Unicode.Scalar(scalar).map(JSONText.isInvisible) == true ? (scalar, 3) : nil
    }

    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    private mutating func escape(_ byte: UInt8) {
        out.append(UInt8(ascii: "\\"))
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(byte)
        case 0x0A: out.append(UInt8(ascii: "n"))
        case 0x0D: out.append(UInt8(ascii: "r"))
        case 0x09: out.append(UInt8(ascii: "t"))
        default:
            out += [
                UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), Self.hex[Int(byte >> 4)], Self.hex[Int(byte & 0x0f)],
            ]
        }
    }
}
