import Testing

@testable import AccessPolicy

/// `auth gssapi`, principals, `*@REALM`, `gssapi local-realm` and `gssapi require` in
/// the policy language.
@Suite struct GSSAPIPolicyTests {
    @Test func principalsRealmsAndShortNames() async {
        let compiled = policy(
            """
            gssapi local-realm CORP.EXAMPLE
            deny  auth gssapi user bob
            allow auth gssapi user alice                label "short name"
            allow auth gssapi user *@PARTNER.EXAMPLE    label "partner realm"
            allow auth password user alice              label "alice with a password"
            expect allow from 10.0.0.1 to a.example:443 auth gssapi user alice@CORP.EXAMPLE
            expect deny  from 10.0.0.1 to a.example:443 auth gssapi user bob@CORP.EXAMPLE
            expect deny  from 10.0.0.1 to a.example:443 auth gssapi user alice@PARTNER.EXAMPLE.COM
            expect allow from 10.0.0.1 to a.example:443 auth gssapi user dave@PARTNER.EXAMPLE
            expect deny  from 10.0.0.1 to a.example:443 auth gssapi user alice@OTHER.EXAMPLE
            expect allow from 10.0.0.1 to a.example:443 auth password user alice
            expect deny  from 10.0.0.1 to a.example:443 auth none user alice
            """)
        let report = await ExpectationReport.run(compiled)
        #expect(report.failures.map(\.expectation.line) == [])
        #expect(report.passed == 7)
    }

    @Test func identComparesTheShortNameOfALocalPrincipal() async {
        let compiled = policy(
            """
            gssapi local-realm CORP.EXAMPLE
            ident from 10.0.0.0/8
            allow auth gssapi user alice ident
            expect allow from 10.0.0.1 to a.example:443 auth gssapi user alice@CORP.EXAMPLE ident alice
            expect deny  from 10.0.0.1 to a.example:443 auth gssapi user alice@CORP.EXAMPLE ident mallory
            """)
        #expect(await ExpectationReport.run(compiled).passed == 2)
    }

    @Test func theLeastProtection() {
        #expect(policy("gssapi require integrity").minimumProtection == .integrity)
        #expect(policy("allow from 10.0.0.0/8").minimumProtection == MessageProtection.none)
    }

    @Test(arguments: [
        ("gssapi require integrity\ngssapi require none", "2:8: error: the GSS-API protection is already required on line 1"),
        ("gssapi require secrecy", "1:16: error: 'secrecy' is not a protection level"),
        ("gssapi local-realm alice@CORP", "1:20: error: 'alice@CORP' is not a realm"),
        ("gssapi mapping x", "1:8: error: expected 'require' or 'local-realm' after 'gssapi'"),
        ("allow auth kerberos", "1:12: error: 'kerberos' is not an auth method"),
    ])
    func errors(text: String, expected: String) {
        #expect(diagnostics(text).first?.hasPrefix(expected) == true, "\(diagnostics(text))")
    }
}
