import Foundation
import NetAddress
import Testing

@testable import AccessPolicy

@Suite struct EngineTests {
    let corporate = policy(
        """
        net   corp   = 10.0.0.0/8, fd00::/8
        ports web    = http, https, 8000-8999
        users admins = alice, bob
        hosts intranet = .corp.example, 192.168.0.0/16

        ident from @corp timeout 5s

        deny  connect to 169.254.169.254 label "metadata"
        deny  to .bad.example
        allow connect from @corp user @admins ident to any label "admins"
        allow connect from @corp ident to any port @web
        allow from @corp to @intranet
        """)

    func decide(_ policy: Policy, _ request: RequestFacts, ident: IdentOutcome = .failure(.unreachable)) async -> Decision {
        await PolicyEngine(policy: policy).decide(request, identLookup: { _, _ in IdentAnswer(ident) })
    }

    @Test func firstMatchWins() async {
        let metadata = await decide(corporate, facts(to: "169.254.169.254:80", user: "alice"), ident: .userID("alice"))
        #expect(metadata.verdict == .deny)
        #expect(metadata.rule == RuleReference(line: 8, label: "metadata"))
        let admin = await decide(corporate, facts(to: "198.51.100.1:22", user: "alice"), ident: .userID("alice"))
        #expect(admin.rule?.label == "admins")
    }

    @Test func implicitFinalDeny() async {
        let outsider = await decide(corporate, facts(from: "203.0.113.9", to: "192.168.1.1:80"))
        #expect(outsider.verdict == .deny)
        #expect(outsider.rule == nil)
        #expect(outsider.refusal == .notAllowed)
    }

    @Test func ipv6ClientsAndDestinations() async {
        #expect(await decide(corporate, facts(from: "[fd00::5]:1000", to: "192.168.3.4:22")).verdict == .allow)
        #expect(await decide(corporate, facts(from: "[fe80::5]:1000", to: "192.168.3.4:22")).verdict == .deny)
        let v6 = policy("allow from 10.0.0.0/8 to 2001:db8::/32 port 443")
        #expect(await decide(v6, facts(to: "[2001:db8::1]:443")).verdict == .allow)
        #expect(await decide(v6, facts(to: "[2001:db9::1]:443")).verdict == .deny)
        #expect(
            await decide(v6, facts(from: "[::ffff:10.9.9.9]:5", to: "[2001:db8::1]:443")).verdict == .allow, "IPv4-mapped clients"
        )
    }

    @Test func domainSuffixesAndNames() async {
        #expect(await decide(corporate, facts(to: "wiki.corp.example:80")).verdict == .allow)
        #expect(await decide(corporate, facts(to: "CORP.EXAMPLE.:80")).verdict == .allow)
        #expect(await decide(corporate, facts(to: "notcorp.example:80")).verdict == .deny)
        let bad = await decide(corporate, facts(to: "x.bad.example:80", user: "alice"), ident: .userID("alice"))
        #expect(bad.rule?.line == 9)
    }

    @Test func cidrRulesMatchTheResolvedAddressOfAName() async {
        let resolved = await decide(corporate, facts(to: "printer:631", resolved: "192.168.7.7"))
        #expect(resolved.verdict == .allow, "192.168.0.0/16 in @intranet matches the resolved address")
        #expect(await decide(corporate, facts(to: "printer:631")).verdict == .deny, "unresolved: no CIDR rule matches")
        let metadata = policy("deny to 169.254.169.254\nallow from any to any")
        #expect(await decide(metadata, facts(to: "metadata.internal:80", resolved: "169.254.169.254")).verdict == .deny)
    }

    @Test func portSetsRangesAndServices() async {
        let ports = policy("ports web = http, https, 8000-8999\nallow from 10.0.0.0/8 port @web, 22")
        for (port, verdict) in [
            (80, Decision.Verdict.allow), (443, .allow), (8500, .allow), (22, .allow), (9000, .deny), (21, .deny),
        ] {
            #expect(await decide(ports, facts(to: "192.0.2.1:\(port)")).verdict == verdict, "port \(port)")
        }
    }

    @Test func timeWindowsInThePolicyZone() async {
        let office = policy(
            "timezone UTC+01:00\nallow from 10.0.0.0/8 time mon-fri 08:00-18:00\nallow from 10.0.0.0/8 to .night time daily 22:00-06:00"
        )
        // 2026-11-30 is a Monday. 07:30 UTC is 08:30 in UTC+01:00.
        let mondayMorning = RequestText.time(iso: "2026-11-30T07:30")!
        #expect(await decide(office, facts(time: mondayMorning)).verdict == .allow)
        #expect(await decide(office, facts(time: mondayMorning - 3600)).verdict == .deny, "07:30 local is before opening")
        let saturday = RequestText.time(iso: "2026-12-05T10:00")!
        #expect(await decide(office, facts(time: saturday)).verdict == .deny)
        #expect(await decide(office, facts()).verdict == .deny, "no time known: no window matches")
        let sundayNight = RequestText.time(iso: "2026-12-06T23:30")!
        #expect(await decide(office, facts(to: "a.night:80", time: sundayNight - 3600)).verdict == .allow, "past midnight")
        let mondayDawn = RequestText.time(iso: "2026-11-30T05:59")!
        #expect(await decide(office, facts(to: "a.night:80", time: mondayDawn - 3600)).verdict == .allow, "wraps into Monday")
    }

    @Test func identMismatchIs93AndUnreachableIs92() async {
        let mismatch = await decide(corporate, facts(.socks4, to: "198.51.100.1:22", user: "alice"), ident: .userID("mallory"))
        #expect(mismatch.verdict == .deny)
        #expect(mismatch.refusal == .identMismatch)
        let unreachable = await decide(corporate, facts(.socks4, to: "198.51.100.1:22", user: "alice"), ident: .failure(.timeout))
        #expect(unreachable.refusal == .identUnreachable)
        let noUserClaimed = await decide(corporate, facts(to: "198.51.100.1:443"), ident: .userID("carol"))
        #expect(noUserClaimed.verdict == .allow, "without a claimed user, any user-id will do")
        let notAsked = await decide(
            policy("ident from 10.0.0.0/8\nallow from any ident"), facts(from: "192.0.2.9", user: "bob"), ident: .userID("bob"))
        #expect(notAsked.refusal == .identUnreachable)
        #expect(notAsked.ident == .failure(.notAsked))
    }

    @Test func aDenyRuleAfterAnIdentFailureStillSaysWhy() async {
        let strict = policy("ident from any\nallow from any user alice ident\ndeny from any")
        let decision = await decide(strict, facts(.socks4, user: "alice"), ident: .userID("eve"))
        #expect(decision.rule?.line == 3)
        #expect(decision.refusal == .identMismatch)
    }

    @Test func identIsAskedAtMostOnceAndOnlyWhenNeeded() async {
        let counter = IdentCounter(.userID("zed"))
        let engine = PolicyEngine(
            policy: policy(
                "ident from any\nallow from any user alice ident\nallow from any user bob ident\nallow from any to .free"))
        _ = await engine.decide(facts(to: "www.free:80"), identLookup: counter.lookup)
        #expect(counter.lookups == 0, "no rule that could match needs ident")
        let decision = await engine.decide(facts(to: "www.free:80", user: "alice"), identLookup: counter.lookup)
        #expect(decision.verdict == .allow)
        #expect(counter.lookups == 1)
        _ = await engine.explain(facts(user: "bob"), identLookup: counter.lookup)
        #expect(counter.lookups == 2, "two ident rules, one lookup")
    }

    /// The compiled matcher and the rule-by-rule explanation must always agree.
    @Test func matcherAgreesWithExplain() async {
        var generator = SystemRandomNumberGenerator()
        let big = Policy(rules: (0..<300).map { _ in Self.randomRule(&generator) })
        let engine = PolicyEngine(policy: big)
        let ident: IdentLookup = { _, _ in IdentAnswer(.userID("u1")) }
        for _ in 0..<2000 {
            let request = Self.randomFacts(&generator)
            let fast = await engine.decide(request, identLookup: ident)
            let slow = await engine.explain(request, identLookup: ident)
            #expect(fast.verdict == slow.verdict && fast.rule == slow.rule && fast.refusal == slow.refusal, "\(request)")
            if fast.rule != slow.rule { return }
        }
    }

    static func randomRule(_ g: inout SystemRandomNumberGenerator) -> Rule {
        func maybe<T>(_ make: () -> T) -> T? { Bool.random(using: &g) ? make() : nil }
        let networks = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "::/0", "fd00::/8", "0.0.0.0/0", "10.1.2.3/32"]
        let names: [DestinationPattern] = [
            .hostName("a.example"), .domainSuffix("example"), .domainSuffix("b.example"), .hostName("c.test"),
        ]
        var rule = Rule(Bool.random(using: &g) ? .allow : .deny, RuleReference(line: Int.random(in: 1...9999, using: &g)))
        rule.commands = maybe { [RequestFacts.Command.allCases.randomElement(using: &g)!] }
        rule.versions = maybe { Set(RequestFacts.Version.allCases.filter { _ in Bool.random(using: &g) }) }
        rule.sources = maybe { [IPNetwork(networks.randomElement(using: &g)!)!] }
        rule.destinations = maybe {
            [Bool.random(using: &g) ? .network(IPNetwork(networks.randomElement(using: &g)!)!) : names.randomElement(using: &g)!]
        }
        rule.ports = maybe {
            let low = UInt16.random(in: 0...1000, using: &g)
            return [low...(low + UInt16.random(in: 0...200, using: &g))]
        }
        rule.users = maybe { ["u1", "u2"].filter { _ in Bool.random(using: &g) }.reduce(into: Set<String>()) { $0.insert($1) } }
        rule.times = maybe { [WeeklyWindow(days: [Int.random(in: 0...6, using: &g)], start: 600, end: 120, description: "w")] }
        rule.requiresIdent = Int.random(in: 0...4, using: &g) == 0
        return rule
    }

    static func randomFacts(_ g: inout SystemRandomNumberGenerator) -> RequestFacts {
        let clients = ["10.1.2.3", "10.9.9.9", "192.0.2.7", "[fd00::1]:4", "[2001:db8::1]:4", "8.8.8.8"]
        let destinations = ["a.example:80", "x.b.example:500", "c.test:1000", "10.1.2.3:22", "192.0.2.200:700", "[fd00::9]:99"]
        return facts(
            RequestFacts.Version.allCases.randomElement(using: &g)!, RequestFacts.Command.allCases.randomElement(using: &g)!,
            from: clients.randomElement(using: &g)!, to: destinations.randomElement(using: &g)!,
            resolved: Bool.random(using: &g) ? "10.1.2.3" : nil, user: ["u1", "u2", nil].randomElement(using: &g)!,
            time: Bool.random(using: &g) ? Int64.random(in: 0...2_000_000_000, using: &g) : nil)
    }
}

@Suite struct ShippedPoliciesTests {
    static let root = URLPath.repositoryRoot

    @Test func embeddedDefaultIsPoliciesDefault() throws {
        #expect(try String(contentsOfFile: Self.root + "/policies/default.policy", encoding: .utf8) == DefaultPolicy.text)
    }

    @Test func everyShippedPolicyIsCleanAndPassesItsTests() async throws {
        let folder = Self.root + "/policies"
        let files = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".policy") }.sorted()
        #expect(files.count >= 3)
        for name in files {
            let path = folder + "/" + name
            let tests =
                FileManager.default.fileExists(atPath: path + ".tests")
                ? (try String(contentsOfFile: path + ".tests", encoding: .utf8), path + ".tests") : nil
            let compilation = PolicyCompiler.compile(try String(contentsOfFile: path, encoding: .utf8), file: path, tests: tests)
            #expect(compilation.diagnostics.isEmpty, "\(name): \(compilation.diagnostics)")
            guard let policy = compilation.policy else { continue }
            #expect(!policy.expectations.isEmpty, "\(name) has tests")
            let report = await ExpectationReport.run(policy)
            #expect(report.failures.isEmpty, "\(name): \(report.failures.map(\.expectation.lineText))")
        }
    }

    /// Every ```policy block of the language reference compiles; the expectations in
    /// it hold.
    @Test func everyExampleInTheReferenceIsChecked() async throws {
        let reference = try String(contentsOfFile: Self.root + "/docs/policy-language.md", encoding: .utf8)
        let blocks = reference.components(separatedBy: "```policy\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
        #expect(blocks.count >= 5)
        for block in blocks {
            let compilation = PolicyCompiler.compile(block, file: "docs/policy-language.md")
            #expect(compilation.errors.isEmpty, "\(block)\n\(compilation.errors)")
            guard let policy = compilation.policy else { continue }
            let report = await ExpectationReport.run(policy)
            #expect(report.failures.isEmpty, "\(report.failures.map(\.expectation.lineText))")
        }
    }
}

enum URLPath {
    /// The repository's top folder, from this file's place in it.
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
}

/// Whether a rule names the destination itself: the gateway relays to its own address
/// only for such a rule.
@Suite struct NamesDestinationTests {
    func decision(_ text: String, to destination: String, resolved: String? = nil) -> Decision? {
        PolicyEngine(policy: policy(text)).decideImmediately(facts(to: destination, resolved: resolved))
    }

    @Test func aHostAddressOrExactNameNamesIt() {
        #expect(decision("allow to 127.0.0.1 port 1080", to: "127.0.0.1:1080")?.ruleNamesDestination == true)
        #expect(decision("allow to [::1] port 1080", to: "[::1]:1080")?.ruleNamesDestination == true)
        #expect(decision("allow to gw.example", to: "gw.example:1080", resolved: "127.0.0.1")?.ruleNamesDestination == true)
    }

    @Test func aNetworkADomainOrAnyDoesNot() {
        #expect(decision("allow to any", to: "127.0.0.1:1080")?.ruleNamesDestination == false)
        #expect(decision("allow to 127.0.0.0/8", to: "127.0.0.1:1080")?.ruleNamesDestination == false)
        #expect(decision("allow to .example", to: "gw.example:1080", resolved: "127.0.0.1")?.ruleNamesDestination == false)
        #expect(decision("allow from any", to: "127.0.0.1:1080")?.ruleNamesDestination == false)
    }
}

