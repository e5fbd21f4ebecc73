import ProxyURL
import Testing

@testable import AccessPolicy

/// `via` in the policy language.
@Suite struct RouteTests {
    @Test func theAllowingRulesParentsInOrder() async {
        let compiled = policy(
            """
            allow from 10.0.0.0/8 to .corp.example
            allow from 10.0.0.0/8 via socks5h://gw1:1080, socks4a://gw2 label "via the site"
            expect allow from 10.1.1.1 to git.corp.example:22
            expect allow from 10.1.1.1 to www.example.com:443 via socks5h://gw1:1080
            """)
        let report = await ExpectationReport.run(compiled)
        #expect(report.passed == 2 && report.failures.isEmpty)
        let engine = PolicyEngine(policy: compiled)
        let routed = await engine.decide(facts(from: "10.1.1.1", to: "www.example.com:443"), identLookup: nil)
        #expect(routed.route?.map(\.description) == ["socks5h://gw1:1080", "socks4a://gw2:1080"])
        let direct = engine.decideImmediately(facts(from: "10.1.1.1", to: "git.corp.example:22"))
        #expect(direct?.route == nil)
    }

    @Test func anExpectationOfAnotherParentFails() async {
        let compiled = policy(
            """
            allow from 10.0.0.0/8 via socks5h://gw1:1080
            expect allow from 10.1.1.1 to www.example.com:443 via socks5h://gw2:1080
            """)
        #expect(await ExpectationReport.run(compiled).failures.count == 1)
    }

    @Test func aPasswordFileFillsTheParentsWithAUser() {
        let secrets: PolicyCompiler.SecretReader = { path in
            path == "/etc/identgate/gw.pw" ? .success("s3cret") : .failure(.init("no such file"))
        }
        let compiled = PolicyCompiler.compile(
            "allow via socks5://alice@gw1, socks5://gw2, socks5://bob:own@gw3 password-file /etc/identgate/gw.pw",
            file: "p", readSecret: secrets)
        #expect(compiled.errors.isEmpty, "\(compiled.diagnostics)")
        let route = compiled.policy?.rules.first?.route
        #expect(route?.map(\.password) == ["s3cret", nil, "own"])
        let missing = PolicyCompiler.compile("allow via socks5://a@gw password-file /nope", file: "p", readSecret: secrets)
        #expect(missing.errors.first?.description.hasPrefix("p:1:25: error: cannot read the password file /nope: no such file") == true)
        let offline = PolicyCompiler.compile("allow via socks5://a@gw password-file /x", file: "p")
        #expect(offline.errors.first?.message == "password-file needs a policy read from a file")
    }

    @Test(arguments: [
        ("deny via socks5://gw", "1:6: error: 'via' is for allow rules"),
        ("allow via http://gw", "1:11: error: not a SOCKS URL: unknown scheme 'http'"),
        ("allow via socks5://gw:70000", "1:23: error: not a SOCKS URL: '70000' is not a port"),
        ("allow from 10.0.0.0/8 via socks5://u:pw@gw", "1:27: warning: the password of socks5://u@gw:1080 is written in the policy"),
        ("allow from 10.0.0.0/8 via socks://gw", "1:27: warning: socks:// is read as socks4://"),
    ])
    func diagnosticsWithPositions(text: String, expected: String) {
        #expect(diagnostics(text).contains { $0.hasPrefix(expected) }, "\(diagnostics(text))")
    }
}
