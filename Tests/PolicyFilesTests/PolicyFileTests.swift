import AccessPolicy
import AuditLog
import Foundation
import PolicyFiles
import Testing

@Suite struct PolicyFileTests {
    /// The digest every decision record carries is the audit chain's SHA-256 of the same bytes.
    @Test func policyDigestIsTheAuditChainsSHA256() {
        for text in ["", "allow from any to any\n", "# café \u{1F600}\n" + String(repeating: "x", count: 10_000)] {
            #expect(PolicyFile.sha256(of: text) == AuditChain.hash(Data(text.utf8)))
        }
        #expect(PolicyFile.sha256(of: "") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    func write(_ text: String, to path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    @Test func digestIsOfTheBytesCompiledAndTestsAreRead() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("policy-\(UUID()).policy").path
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + ".tests")
        }
        let text = "allow connect from 10.0.0.0/8 to any port 443 label \"web\"\n"
        try write(text, to: path)
        try write("expect allow from 10.1.2.3 to example.com:443\n", to: path + ".tests")
        let file = try PolicyFile.read(path)
        #expect(file.sha256 == AuditChain.hash(Data(text.utf8)))
        #expect(file.compilation.policy?.rules.count == 1)
        #expect(file.compilation.policy?.expectations.count == 1)
        let tested = await TestedPolicy.load(file)
        #expect(tested.isUsable)
        #expect(tested.report?.passed == 1)
    }

    @Test func aPolicyThatDoesNotCompileHasNoEngine() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("broken-\(UUID()).policy").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try write("allow frobnicate\n", to: path)
        let tested = await TestedPolicy.load(try PolicyFile.read(path))
        #expect(tested.engine == nil)
        #expect(!tested.isUsable)
    }

    @Test func aMissingFileIsAnErrorThatNamesIt() {
        #expect(throws: TextFile.ReadError.self) { try PolicyFile.read("/nonexistent/x.policy") }
        do {
            _ = try PolicyFile.read("/nonexistent/x.policy")
        } catch {
            #expect("\(error)".contains("/nonexistent/x.policy"))
        }
    }

    @Test func embeddedDefaultDigest() {
        #expect(PolicyFile.embeddedDefault.sha256 == AuditChain.hash(Data(DefaultPolicy.text.utf8)))
        #expect(PolicyFile.embeddedDefault.compilation.policy != nil)
    }
}
