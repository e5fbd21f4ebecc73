import Foundation
import Testing

@testable import PrintableText

@Suite struct JSONTextTests {
    /// Line separators are valid JSON but end a line for many readers: escaped, and read back.
    @Test func lineSeparatorsAreEscaped() throws {
        let text = "a\u{2028}b\u{2029}c\"\u{1B}"
        let quoted = JSONText.quoted(text)
        #expect(quoted == #""a\u2028b\u2029c\"\u001b""#)
        #expect(try JSONDecoder().decode(String.self, from: Data(quoted.utf8)) == text)
    }

    /// C1 controls (U+009B: a CSI to many terminals) and bidirectional controls are
    /// valid JSON but not text to print raw: escaped by our writer and, in JSON another
    /// serializer wrote, by `escapingInvisibles`; both read back the same text.
    @Test func c1AndBidirectionalControlsAreEscaped() throws {
        let text = "x\u{9B}31m\u{85}y\u{202E}z\u{2066}é€"
        let quoted = JSONText.quoted(text)
        #expect(quoted == #""x\u009b31m\u0085y\u202ez\u2066é€""#)
        #expect(try JSONDecoder().decode(String.self, from: Data(quoted.utf8)) == text)
        let foreign = "{\"user\":\"" + text + "\"}"
        let escaped = JSONText.escapingInvisibles(foreign)
        #expect(escaped == #"{"user":"x\u009b31m\u0085y\u202ez\u2066é€"}"#)
        #expect(try JSONDecoder().decode([String: String].self, from: Data(escaped.utf8)) == ["user": text])
    }
}
