import Testing

@testable import PrintableText

@Suite struct DisplayTextTests {
    @Test func ordinaryTextIsUnchanged() {
        for text in ["alice", "CORP\\alice", "café", "日本", "a b", ""] {
            #expect(DisplayText.escaped(text) == text)
        }
    }

    @Test func controlsAndOverridesAreEscaped() {
        #expect(DisplayText.escaped("a\nb") == #"a\nb"#)
        #expect(DisplayText.escaped("a\r\tb") == #"a\r\tb"#)
        #expect(DisplayText.escaped("\u{1B}[31mred") == #"\u{1B}[31mred"#)
        #expect(DisplayText.escaped("bell\u{07}") == #"bell\u{7}"#)
        #expect(DisplayText.escaped("del\u{7F}c1\u{9B}") == #"del\u{7F}c1\u{9B}"#)
        #expect(DisplayText.escaped("x\u{202E}y\u{2066}") == #"x\u{202E}y\u{2066}"#)
        #expect(DisplayText.escaped("nul\u{0}") == #"nul\u{0}"#)
        #expect(DisplayText.escaped(nil, absent: "-") == "-")
    }

    @Test func noEscapedTextHoldsAControl() {
        for value in UInt32(0)..<0x300 {
            guard let scalar = Unicode.Scalar(value) else { continue }
            let escaped = DisplayText.escaped("x\(Character(scalar))y")
            #expect(!escaped.unicodeScalars.contains { DisplayText.needsEscape($0) }, "U+\(String(value, radix: 16))")
        }
    }
}
