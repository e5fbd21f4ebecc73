import AccessPolicy
import Foundation
import Testing

@testable import PolicyDiff

/// `identgate fmt`: idempotent, and never a change in what the policy decides.
@Suite struct FormatterTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func theLayout() {
        let text = """
            # header comment


            net  inside=10.0.0.0/8 ,192.168.0.0/16
            deny to 169.254.169.254    label "metadata"   # cloud
            allow   connect,bind from @inside label "inside" port 80,443
            allow from 127.0.0.1
              # an indented comment
            limit sessions 10 per client label "share"

            expect deny from 10.1.2.3 to 169.254.169.254:80
            expect allow from 10.1.2.3 to 192.0.2.1:443
            expect 93 from 10.1.2.3 to 192.0.2.1:443 user alice ident bob version socks4


            """
        #expect(
            PolicyFormatter.format(text) == """
                # header comment

                net inside = 10.0.0.0/8, 192.168.0.0/16
                deny  to 169.254.169.254                      label "metadata"  # cloud
                allow connect, bind from @inside port 80, 443 label "inside"
                allow from 127.0.0.1
                # an indented comment
                limit sessions 10 per client                  label "share"

                expect deny  from 10.1.2.3 to 169.254.169.254:80
                expect allow from 10.1.2.3 to 192.0.2.1:443
                expect 93    from 10.1.2.3 to 192.0.2.1:443 user alice ident bob version socks4

                """)
    }

    @Test func theShippedPoliciesAreFormattedAndStayTheSame() async throws {
        let folder = Self.repository.appendingPathComponent("policies")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".policy") }
        #expect(files.count >= 3)
        for file in files {
            let text = try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
            let formatted = PolicyFormatter.format(text)
            #expect(PolicyFormatter.format(formatted) == formatted, "\(file): formatting twice changes nothing")
            let diff = try await PolicyDiff(old: compiled(text), new: compiled(formatted))
            #expect(diff.differences.isEmpty && diff.settingChanges.isEmpty, "\(file): \(diff.differences.map(\.regionLine))")
            #expect(compiled(formatted).expectations.count == compiled(text).expectations.count, "\(file): every test kept")
        }
    }

    @Test func fuzzedPoliciesKeepTheirMeaning() async throws {
        var random = PolicyDiffPropertyTests.Random(state: 424_242)
        for _ in 0..<60 {
            // A random policy, written carelessly: odd spaces, comments, blank lines.
            let lines = PolicyDiffPropertyTests.policy(&random).map { line -> String in
                var line = line.replacingOccurrences(of: ", ", with: random.chance(50) ? "," : " ,  ")
                if random.chance(30) { line = "   " + line.replacingOccurrences(of: " ", with: "  ") }
                if line.hasPrefix("allow") || line.hasPrefix("deny"), random.chance(40) { line += " label \"r\(random.below(9))\"" }
                if random.chance(20) { line += "   # note" }
                if random.chance(20) { line += "\n\n\n" }
                return line
            }
            let text = lines.joined(separator: "\n")
            let formatted = PolicyFormatter.format(text)
            #expect(PolicyFormatter.format(formatted) == formatted, "idempotent:\n\(text)")
            let diff = try await PolicyDiff(old: compiled(text), new: compiled(formatted))
            #expect(diff.differences.isEmpty, "same meaning:\n\(text)\n---\n\(formatted)")
        }
    }
}
