/// JSON string literals (RFC 8259) as the audit log writes them, for the other JSON the
/// gateway prints (`--log-format json`, `probe --json`). Beyond what RFC 8259 requires,
/// DEL and what `DisplayText` escapes beyond ASCII (C1 controls, bidirectional controls,
/// U+2028/2029) are written as `\uXXXX`: valid JSON either way, but not text to print raw.
public enum JSONText {
    public static func quoted(_ text: String) -> String {
        var out: [UInt8] = []
        appendQuoted(text, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `value` as a quoted JSON string. Copies the string in runs between the
    /// bytes that need escaping: most audit strings (addresses, names, digests) have none
    /// and go in with one copy.
    public static func appendQuoted(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { bytes in
            var runStart = 0
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                // Printable ASCII but the quote and the backslash: most bytes, one test.
                if byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\") {
                    index += 1
                    continue
                }
                // U+2028 and U+2029 (E2 80 A8/A9) are valid in JSON but end a line for
                // many line readers (JavaScript, Python's splitlines): escaped too.
                // So are the C1 controls (C2 80-9F; U+009B is a CSI to many terminals) and
                // the bidirectional controls: valid JSON, but not text to print raw.
                let invisible = invisibleScalar(bytes, at: index)
                guard needsEscape(byte) || invisible != nil else {
                    index += 1
                    continue
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
                if let (scalar, length) = invisible {
                    appendUnicodeEscape(scalar, to: &out)
                    index += length
                } else {
                    appendEscape(byte, to: &out)
                    index += 1
                }
                runStart = index
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart...]))
        }
        out.append(UInt8(ascii: "\""))
    }

    /// JSON text from another serializer (Foundation's leaves them raw) with the
    /// characters a terminal or a line reader would act on escaped as `\uXXXX`. They can
    /// only be inside strings, where the escape means the same character.
    public static func escapingInvisibles(_ json: String) -> String {
        guard json.unicodeScalars.contains(where: isInvisible) else { return json }
        var out: [UInt8] = []
        for scalar in json.unicodeScalars {
            if isInvisible(scalar) {
                appendUnicodeEscape(scalar.value, to: &out)
            } else {
                out.append(contentsOf: String(scalar).utf8)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// What `DisplayText` escapes beyond ASCII (ASCII's controls JSON escapes itself).
    static func isInvisible(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value >= 0x80 && DisplayText.needsEscape(scalar)
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// The scalar and its UTF-8 length, if the bytes at `index` encode one that
    /// `isInvisible` names (all are two or three bytes long).
    private static func invisibleScalar(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> (UInt32, Int)? {
        let byte = bytes[index]
        guard byte == 0xC2 || byte == 0xD8 || byte == 0xE2 else { return nil }
        if byte != 0xE2 {
            guard index + 1 < bytes.count else { return nil }
            let scalar = (UInt32(byte & 0x1F) << 6) | UInt32(bytes[index + 1] & 0x3F)
            return Unicode.Scalar(scalar).map(isInvisible) == true ? (scalar, 2) : nil
        }
        guard index + 2 < bytes.count else { return nil }
        let scalar = (UInt32(byte & 0x0F) << 12) | (UInt32(bytes[index + 1] & 0x3F) << 6) | UInt32(bytes[index + 2] & 0x3F)
        return Unicode.Scalar(scalar).map(isInvisible) == true ? (scalar, 3) : nil
    }

    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    private static func appendEscape(_ byte: UInt8, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\\"))
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(byte)
        case 0x0A: out.append(UInt8(ascii: "n"))
        case 0x0D: out.append(UInt8(ascii: "r"))
        case 0x09: out.append(UInt8(ascii: "t"))
        default: out += [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
        }
    }

    /// `\uXXXX` for a scalar in the Basic Multilingual Plane (all that are escaped are).
    private static func appendUnicodeEscape(_ scalar: UInt32, to out: inout [UInt8]) {
        out += [UInt8(ascii: "\\"), UInt8(ascii: "u")]
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hex[Int((scalar >> UInt32(shift)) & 0xF)]) }
    }
}
