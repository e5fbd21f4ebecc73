import NetAddress
import ProxyProtocol
import Testing

/// The PROXY protocol parser: what HAProxy sends (v1 text, v2 binary with TLVs), the
/// balancer's health checks (LOCAL), and every malformed or oversized header refused
/// with a reason, never a crash; partial headers wait for more, within the cap.
@Suite struct ProxyHeaderTests {
    static let v2 = ProxyHeader.v2Signature

    static func v2Header(command: UInt8 = 0x21, family: UInt8 = 0x11, block: [UInt8]) -> [UInt8] {
        v2 + [command, family, UInt8(block.count >> 8), UInt8(block.count & 0xFF)] + block
    }

    static let ipv4Block: [UInt8] = [192, 0, 2, 7, 198, 51, 100, 1, 0xDC, 0x04, 0x04, 0x38]  // :56324 -> :1080

    @Test func v1TCP4AndTCP6() {
        let line = Array("PROXY TCP4 192.0.2.7 198.51.100.1 56324 1080\r\n".utf8)
        #expect(
            ProxyHeader.parse(line + [5, 1, 0])
                == .header(
                    ProxyHeader(
                        version: 1, command: .proxy, source: IPEndpoint("192.0.2.7:56324"), destination: IPEndpoint("198.51.100.1:1080")),
                    length: line.count))
        let six = Array("PROXY TCP6 2001:db8::7 2001:db8::1 40000 1080\r\n".utf8)
        guard case .header(let header, _) = ProxyHeader.parse(six) else { Issue.record("TCP6 not read"); return }
        #expect(header.source == IPEndpoint("[2001:db8::7]:40000"))
        guard case .header(let unknown, _) = ProxyHeader.parse(Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)) else {
            Issue.record("UNKNOWN not read")
            return
        }
        #expect(unknown.source == nil && unknown.command == .proxy)
    }

    @Test func v1Malformed() {
        let cases = [
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  // a field missing
            "PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",  // IPv6 in TCP4
            "PROXY TCP4 192.0.2.7 198.51.100.1 056324 1080\r\n",  // leading zero
            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 1080\r\n",  // out of range
            "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",  // no CR
            "PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 1 \u{7f}\r\n",
            "PROXY  TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
            "PROXZ TCP4\r\n",
        ]
        for text in cases {
            guard case .invalid = ProxyHeader.parse(Array(text.utf8)) else {
                Issue.record("accepted: \(text.debugDescription)")
                continue
            }
        }
        // Over 107 bytes without a line end: refused, not waited for.
        #expect(ProxyHeader.parse(Array(("PROXY TCP4 " + String(repeating: "1", count: 120)).utf8)) != .needMore)
        // A partial line waits.
        #expect(ProxyHeader.parse(Array("PROXY TCP4 192.0".utf8)) == .needMore)
        #expect(ProxyHeader.parse(Array("PRO".utf8)) == .needMore)
    }

    @Test func v2ProxyWithTLVsAndLocal() {
        // An ALPN TLV (type 0x01) and a NOOP (0x04) after the addresses: skipped.
        let tlvs: [UInt8] = [0x01, 0x00, 0x02, 0x68, 0x32, 0x04, 0x00, 0x00]
        let header = Self.v2Header(block: Self.ipv4Block + tlvs)
        #expect(
            ProxyHeader.parse(header + [5])
                == .header(
                    ProxyHeader(
                        version: 2, command: .proxy, source: IPEndpoint("192.0.2.7:56324"), destination: IPEndpoint("198.51.100.1:1080")),
                    length: header.count))
        let six = [UInt8](repeating: 0, count: 15) + [1] + [UInt8](repeating: 0, count: 15) + [2] + [0x9C, 0x40, 0x04, 0x38]
        guard case .header(let v6, _) = ProxyHeader.parse(Self.v2Header(family: 0x21, block: six)) else {
            Issue.record("TCP6 not read")
            return
        }
        #expect(v6.source == IPEndpoint("[::1]:40000") && v6.destination == IPEndpoint("[::2]:1080"))
        // LOCAL (a health check), addresses or none: no client.
        #expect(
            ProxyHeader.parse(Self.v2Header(command: 0x20, family: 0x00, block: []))
                == .header(ProxyHeader(version: 2, command: .local), length: 16))
        #expect(ProxyHeader.parse(Self.v2Header(family: 0x00, block: [])) == .header(ProxyHeader(version: 2, command: .proxy), length: 16))
    }

    @Test func v2Malformed() {
        let invalid: [[UInt8]] = [
            Self.v2Header(command: 0x11, block: Self.ipv4Block),  // version 1 in a v2 header
            Self.v2Header(command: 0x22, block: Self.ipv4Block),  // command 2
            Self.v2Header(family: 0x51, block: Self.ipv4Block),  // family 5
            Self.v2Header(block: Array(Self.ipv4Block.prefix(8))),  // addresses cut short
            Self.v2Header(block: Self.ipv4Block + [0x01, 0x00, 0x09, 0x00]),  // a TLV longer than the header
            Self.v2Header(block: Self.ipv4Block + [0x01, 0x00]),  // half a TLV header
            Self.v2 + [0x21, 0x11, 0xFF, 0xFF],  // 65,535 bytes announced: over the cap
            [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B],  // wrong signature
        ]
        for bytes in invalid {
            guard case .invalid = ProxyHeader.parse(bytes) else {
                Issue.record("accepted: \(bytes)")
                continue
            }
        }
        // Partial headers wait; every prefix of a valid one does.
        let header = Self.v2Header(block: Self.ipv4Block)
        for count in 1..<header.count {
            #expect(ProxyHeader.parse(header.prefix(count)) == .needMore, "prefix of \(count)")
        }
    }

    @Test func notAHeaderAtAll() {
        #expect(ProxyHeader.parse([0x05, 0x01, 0x00]) == .invalid("no PROXY protocol header"))
        #expect(ProxyHeader.parse([UInt8]()) == .needMore)
    }

    @Test func randomBytesNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...200, using: &generator)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Half of them start like a header, to reach the deeper paths.
            if Bool.random(using: &generator) { bytes = Self.v2 + [0x21, 0x11] + bytes }
            _ = ProxyHeader.parse(bytes)
        }
    }
}
