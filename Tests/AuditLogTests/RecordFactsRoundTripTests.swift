import AccessPolicy
import AuditLog
import Foundation
import NetAddress
import Testing

/// What the gateway writes in a decision record is what `audit replay` reads back: facts
/// → record → JSON line → record → facts gives the same facts, for random requests of
/// every shape (a property test with a fixed seed, so a failure replays).
@Suite struct RecordFactsRoundTripTests {
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    func address(_ random: inout SeededGenerator) -> IPAddress {
        if Bool.random(using: &random) {
            return .v4(IPv4Address(UInt32.random(in: 0...UInt32.max, using: &random)))
        }
        return .v6(IPv6Address(high: UInt64.random(in: 0...UInt64.max, using: &random), low: UInt64.random(in: 0...UInt64.max, using: &random)))
    }

    func text(_ random: inout SeededGenerator) -> String {
        let alphabet = Array("abcXYZ019 .-_\\\"é\u{1B}\n\u{202E}\u{2028}\u{9B}")
        return String((0..<Int.random(in: 1...12, using: &random)).map { _ in alphabet.randomElement(using: &random) ?? "a" })
    }

    func facts(_ random: inout SeededGenerator) -> RequestFacts {
        let destination: RequestFacts.Destination =
            Bool.random(using: &random) ? .address(address(&random)) : .hostName("host\(Int.random(in: 0...999, using: &random)).example")
        var facts = RequestFacts(
            version: RequestFacts.Version.allCases.randomElement(using: &random) ?? .socks5,
            command: RequestFacts.Command.allCases.randomElement(using: &random) ?? .connect,
            client: IPEndpoint(address: address(&random), port: UInt16.random(in: 0...UInt16.max, using: &random)),
            listener: IPEndpoint(address: address(&random), port: UInt16.random(in: 1...UInt16.max, using: &random)),
            destination: destination, destinationPort: UInt16.random(in: 0...UInt16.max, using: &random),
            claimedUser: Bool.random(using: &random) ? text(&random) : nil,
            authMethod: RequestFacts.AuthMethod.allCases.randomElement(using: &random) ?? .none,
            time: Bool.random(using: &random) ? Int64.random(in: 0...4_000_000_000, using: &random) : nil,
            gssapi: Bool.random(using: &random)
                ? RequestFacts.GSSAPISecurity(mechanism: "krb5", protection: MessageProtection.allCases.randomElement(using: &random) ?? .none)
                : nil)
        if case .hostName = destination, Bool.random(using: &random) { facts.resolvedAddress = address(&random) }
        if Bool.random(using: &random) {
            facts.balancer = IPEndpoint(address: address(&random), port: UInt16.random(in: 1...UInt16.max, using: &random))
        }
        if facts.authMethod == .password { facts.passwordSource = RequestFacts.PasswordSource.allCases.randomElement(using: &random) }
        return facts
    }

    @Test func factsSurviveTheRecordAndItsLine() throws {
        var random = SeededGenerator(state: 20_261_204)
        var chain = AuditChain()
        let decision = Decision(.allow(route: nil), rule: RuleReference(line: 3, label: "any"), trace: [])
        for round in 0..<2000 {
            let original = facts(&random)
            let record = AuditRecord.decision(original, decision, reply: 0, session: UInt64(round))
            let line = try chain.line(for: record)
            let read = try JSONDecoder().decode(AuditRecord.self, from: line)
            #expect(read.requestFacts == original, "round \(round): \(original)")
            if read.requestFacts != original { break }
        }
    }
}
