import Testing

@testable import AccessPolicy

@Suite struct ParserTests {
    /// Each error kind, with its exact line and column.
    @Test(arguments: [
        ("frobnicate 1", "1:1: error: unknown keyword 'frobnicate'"),
        ("allow label \"open", "1:13: error: unterminated string"),
        ("allow conect from any", "1:7: error: unknown condition 'conect' (did you mean 'connect'?)"),
        ("allow from 10.0.0.0/8 from 11.0.0.0/8", "1:23: error: 'from' appears twice"),
        ("allow from 10.0.0.0/33", "1:12: error: '10.0.0.0/33' is not an address or network"),
        ("allow to any port 70000", "1:19: error: '70000' is not a port"),
        ("allow to any port 90-80", "1:19: error: the range 90-80 is empty"),
        ("allow from @nowhere", "1:12: error: unknown set '@nowhere'"),
        ("ports web = 80\nallow from @web", "2:12: error: '@web' is a ports set; here a net set is needed"),
        ("net a = 10.0.0.0/8\nnet a = 11.0.0.0/8", "2:5: error: set 'a' is already defined on line 1"),
        ("net a 10.0.0.0/8", "1:7: error: expected '=' after the set name"),
        ("allow from any, 10.0.0.0/8", "1:12: error: 'any' stands alone"),
        ("allow time mon-fri 8-18", "1:20: error: '8-18' is not hours"),
        ("allow time weekdays 08:00-18:00", "1:12: error: 'weekdays' is not days"),
        ("timezone Europe/Berlin", "1:10: error: 'Europe/Berlin' is not a time zone"),
        ("ident from any timeout infs", "1:24: error: 'infs' is not a duration: use 500ms, 5s or 1m"),
        ("ident from any timeout nans", "1:24: error: 'nans' is not a duration: use 500ms, 5s or 1m"),
        ("ident from any timeout 1e400s", "1:24: error: '1e400s' is not a duration: use 500ms, 5s or 1m"),
        ("ident from any timeout 1h", "1:24: error: '1h' is not a duration: use 500ms, 5s or 1m"),
        ("ident from any timeout 301s", "1:24: error: '301s' is longer than an ident lookup may take (at most 5m)"),
        ("timezone UTC\ntimezone UTC+01:00", "2:1: error: the time zone is already set on line 1"),
        ("allow from 10.0.0.0/8 =", "1:23: error: expected a condition, found '='"),
        ("allow label unquoted", "1:13: error: expected the label as a \"quoted string\""),
        ("net corp = 10.0.0.0/8\nallow from corp", "2:12: error: 'corp' is a set: write @corp"),
        ("net 9lives = 10.0.0.0/8", "1:5: error: a set name is letters, digits"),
        ("allow version socks6", "1:15: error: 'socks6' is not a client protocol"),
        ("allow auth kerberos", "1:12: error: 'kerberos' is not an auth method"),
        ("allow to bad!name", "1:10: error: 'bad!name' is not a network, host name or .domain"),
        ("ident 10.0.0.0/8", "1:7: error: expected 'from' after 'ident'"),
        ("ident from any timeout soon", "1:24: error: 'soon' is not a duration"),
        ("expect maybe from 10.0.0.1 to a.b:1", "1:8: error: 'maybe' is not an expected result"),
        ("expect 92 from 10.0.0.1 to a.b:1 version socks5", "1:8: error: 92 and 93 are SOCKS4 replies"),
        ("expect allow to a.b:1", "1:22: error: the request needs 'from CLIENT'"),
        ("expect allow from 10.0.0.1", "1:27: error: the request needs 'to HOST:PORT'"),
        ("expect allow from 10.0.0.1 to a.b", "1:31: error: 'a.b' is not HOST:PORT"),
        ("expect allow from 10.0.0.1 to a.b:1 at noon", "1:40: error: 'noon' is not a time"),
        ("expect allow from 10.0.0.1 to a.b:1 ident-error lost", "1:49: error: 'lost' is not an ident failure"),
    ])
    func errorKinds(text: String, expected: String) {
        let found = diagnostics(text)
        #expect(found.contains { $0.hasPrefix(expected) }, "\(found)")
    }

    @Test func reportsEveryErrorNotJustTheFirst() {
        let found = diagnostics("allow from 300.0.0.1\nallow to any\nallow port x\ndeny frm any\n").filter {
            $0.contains("error")
        }
        #expect(found.map { String($0.prefix(5)) } == ["1:12:", "3:12:", "4:6: "])
    }

    @Test func errorsArePrintedWithTheLineAndACaret() {
        let compilation = PolicyCompiler.compile(
            "allow from 10.0.0.0/8\nallow to any port 99999 # too big\n", file: "corp.policy")
        #expect(
            compilation.errors.map(\.description) == [
                "corp.policy:2:19: error: '99999' is not a port (0-65535), a range like 8000-8999, or a known service name\n"
                    + "    allow to any port 99999 # too big\n" + "                      ^"
            ])
        #expect(compilation.policy == nil, "a policy with errors is not usable")
    }

    @Test func hostBitsAreAWarning() {
        #expect(
            diagnostics("allow from 10.1.2.3/8 to .example.com") == [
                "1:12: warning: '10.1.2.3/8' has host bits set; it means 10.0.0.0/8"
            ])
    }

    @Test func testsFileHoldsOnlyExpectations() {
        let found = diagnostics("allow from 10.0.0.0/8 to any", tests: "expect allow from 10.0.0.1 to a.b:80\nallow from any\n")
        #expect(found == ["2:1: error: a tests file holds only 'expect' lines"])
    }

    @Test func theIssueExampleCompiles() {
        let example = """
            net   corp   = 10.0.0.0/8, 172.16.0.0/12, fd00::/8
            ports web    = 80, 443, 8000-8999
            users admins = alice, bob

            ident from @corp timeout 5s          # whose identd is asked, and believed

            deny  connect to 169.254.169.254/32                   # cloud metadata
            allow connect from @corp user @admins ident to any     # admins, verified by identd
            allow connect from @corp ident to any port @web
            allow bind    from @corp to any port 1024-65535
            """
        let compiled = policy(example)
        #expect(compiled.rules.count == 4)
        #expect(compiled.rules[1].requiresIdent)
        #expect(compiled.rules[1].users == ["alice", "bob"])
        #expect(compiled.rules[2].ports == [80...80, 443...443, 8000...8999])
        #expect(compiled.identScopes.first?.timeoutSeconds == 5)
        #expect(compiled.rules[0].text == "deny  connect to 169.254.169.254/32")
    }

    @Test func serviceNamesAndLabels() {
        let compiled = policy("allow to any port https, ssh, 8080 label \"web and shells\"")
        #expect(compiled.rules[0].ports == [443...443, 22...22, 8080...8080])
        #expect(compiled.rules[0].reference == RuleReference(line: 1, label: "web and shells"))
    }
}

@Suite struct LintTests {
    @Test func shadowedRule() {
        #expect(
            diagnostics("allow from 10.0.0.0/8 to any port 80, 443\nallow from 10.1.0.0/16 to any port 443 user bob")
                == ["2:1: warning: never reached: the rule on line 1 matches every request this one does"])
    }

    @Test func suffixShadowsNamesBelowIt() {
        #expect(
            diagnostics("deny from 10.0.0.0/8 to .example.com\nallow from 10.0.0.0/8 to www.example.com")
                == ["2:1: warning: never reached: the rule on line 1 matches every request this one does"])
    }

    @Test func identRuleDoesNotShadow() {
        #expect(diagnostics("ident from 10.0.0.0/8\nallow from 10.0.0.0/8 ident\nallow from 10.0.0.0/8 to .corp") == [])
    }

    @Test func duplicateRule() {
        #expect(
            diagnostics("allow from 10.0.0.0/8 to .corp\ndeny to .corp from 10.0.0.0/8")
                == ["2:1: warning: duplicate of the rule on line 1"])
    }

    @Test(arguments: [
        ("allow from 10.0.0.0/8 ident", "1:23: warning: this rule can never match: identd is never asked for these clients"),
        ("allow version socks4 auth password", "1:22: warning: this rule can never match: SOCKS4 has no password or GSS-API authentication"),
        ("allow version socks4a auth gssapi", "1:23: warning: this rule can never match: SOCKS4 has no password or GSS-API authentication"),
        (
            "allow version socks4 to 2001:db8::/32",
            "1:22: warning: this rule can never match: a SOCKS4 request cannot name an IPv6"
        ),
        (
            "allow from 10.0.0.0/8 version socks5 auth none user bob",
            "1:48: warning: this rule can never match: a SOCKS5 request without a password"
        ),
        ("allow udp version socks4, socks4a", "1:7: warning: this rule can never match: SOCKS4 has no UDP"),
    ])
    func neverTrue(text: String, expected: String) {
        let found = diagnostics(text)
        #expect(found.count == 1 && found[0].hasPrefix(expected), "\(found)")
    }

    @Test func openProxy() {
        #expect(diagnostics("allow connect")[0].hasPrefix("1:1: warning: open proxy"))
        #expect(diagnostics("allow from 0.0.0.0/0 to any")[0].hasPrefix("1:1: warning: open proxy"))
        #expect(diagnostics("allow from any auth password") == [], "a password is required: not open")
        #expect(diagnostics("deny from any") == [], "denying everyone is not an open proxy")
    }

    @Test func unusedSet() {
        #expect(diagnostics("net lab = 10.9.0.0/16\nallow from 10.0.0.0/8") == ["1:5: warning: set 'lab' is never used"])
    }
}
