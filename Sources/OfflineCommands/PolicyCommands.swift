import AccessPolicy
import HTTPProxyWire
import ArgumentParser
import AuditLog
import CommandSupport
import NetAddress
import PolicyFiles
import PrintableText
import SOCKSSession
import SOCKSWire

public struct Check: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Check a policy file: errors, and lint warnings.",
        discussion: "Exit status 0 when clean, 1 on errors (and on warnings with --strict)."
    )

    @Argument(help: "The policy file.")
    var file: String

    @Flag(help: "Fail on warnings too.")
    var strict = false

    @Option(
        help: ArgumentHelp(
            "Where the gateway will listen (repeatable): a rule whose parent is one of these is a loop.",
            valueName: "host:port"))
    var listen: [String] = []

    @Option(
        help: ArgumentHelp(
            "Load balancers the gateway will take PROXY protocol headers from (repeatable): ident lines are then "
                + "flagged, as clients behind them cannot be asked.",
            valueName: "cidr"))
    var proxyProtocolFrom: [String] = []

    public func run() async throws {
        var compilation = try loadCompilation(file)
        let listening = try listen.map { text in
            guard let endpoint = IPEndpoint(text) else { throw ValidationError("--listen: '\(text)' is not HOST:PORT") }
            return endpoint
        }
        let balancers = try proxyProtocolFrom.map { text in
            guard let network = IPNetwork(text) else { throw ValidationError("--proxy-protocol-from: '\(text)' is not a network") }
            return network
        }
        if let policy = compilation.policy {
            let lines = (try? TextFile.read(file))?.split(separator: "\n", omittingEmptySubsequences: false) ?? []
            for scope in balancers.isEmpty ? [] : policy.identScopes {
                let line = scope.line ?? 0
                let text = line > 0 && line <= lines.count ? String(lines[line - 1]) : ""
                compilation.diagnostics.append(
                    Diagnostic(
                        .warning, file: file, line: line, column: 1,
                        message: Policy.identBehindBalancerWarning(balancers), lineText: text))
            }
            for (line, parent) in policy.routesToItself(listening: listening) {
                let text = line > 0 && line <= lines.count ? String(lines[line - 1]) : ""
                let column = (text.range(of: "via").map { text.distance(from: text.startIndex, to: $0.lowerBound) } ?? 0) + 1
                compilation.diagnostics.append(
                    Diagnostic(
                        .warning, file: file, line: line, column: column,
                        message: "a loop: \(parent) is where this gateway listens", lineText: text))
            }
        }
        for diagnostic in compilation.diagnostics { print(diagnostic) }
        let rules = compilation.policy.map { "\($0.rules.count) rules, \($0.expectations.count) tests; " } ?? ""
        print("\(file): \(rules)\(compilation.errors.count) errors, \(compilation.warnings.count) warnings")
        if !compilation.errors.isEmpty || (strict && !compilation.warnings.isEmpty) { throw ExitCode(1) }
    }
}

public struct TestCommand: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run the 'expect' lines of a policy (and of FILE.tests beside it).",
        discussion: "Prints each failure with its explanation, then 'N passed, M failed'. Exit status 1 on any failure."
    )

    @Argument(help: "The policy file.")
    var file: String

    public func run() async throws {
        let compilation = try loadCompilation(file)
        guard let policy = compilation.policy else {
            for error in compilation.errors { print(error) }
            throw ExitCode(1)
        }
        let report = await ExpectationReport.run(policy)
        for failure in report.failures { print(Self.describe(failure)) }
        print("\(report.passed) passed, \(report.failures.count) failed")
        if !report.failures.isEmpty { throw ExitCode(1) }
    }

    public static func describe(_ failure: ExpectationReport.Failure) -> String {
        let expectation = failure.expectation
        return """
            \(expectation.file):\(expectation.line): test failed: expected \(expectation.result.rawValue), got \(Explanation.outcome(failure.decision, facts: expectation.facts))
                \(expectation.lineText.trimmingSpaces)
            \(Explanation.render(failure.decision, facts: expectation.facts, indent: "    "))
            """
    }
}

public struct Explain: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Show how a policy decides one request: every rule considered, and why.",
        discussion: """
            Example: identgate explain policies/corporate-egress.policy --from 10.1.2.3 \
            --to www.example.com:443 --resolved 93.184.216.34 --user alice --ident alice
            """
    )

    @Argument(help: "The policy file.")
    var file: String

    @Option(help: ArgumentHelp("The client, IP or IP:PORT.", valueName: "ip[:port]"))
    var from: String

    @Option(help: ArgumentHelp("The destination, HOST:PORT.", valueName: "host:port"))
    var to: String

    @Option(help: "connect, bind or udp.")
    var command: String = "connect"

    @Option(help: "socks4, socks4a, socks5 or http.")
    var version: String = "socks5"

    @Option(help: "The claimed user (SOCKS4 USERID or SOCKS5 username).")
    var user: String?

    @Option(help: "none or password.")
    var auth: String = "none"

    @Option(help: "The user-id the client's identd answers.")
    var ident: String?

    @Option(
        help: ArgumentHelp(
            "How the ident lookup fails: \(IdentFailure.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "kind"))
    var identError: String?

    @Option(
        help: ArgumentHelp(
            "The verified user's groups, as the directory would answer (comma-separated). Default: none.",
            valueName: "list"))
    var groups: String?

    @Flag(help: "The directory does not answer: allow rules with 'group' do not match, deny rules with 'group' do.")
    var groupsUnavailable = false

    @Option(help: ArgumentHelp("For a host name: the address it resolves to.", valueName: "ip"))
    var resolved: String?

    @Option(help: ArgumentHelp("When, in the policy's time zone: 2026-11-30T09:00.", valueName: "time"))
    var at: String?

    @Option(help: ArgumentHelp("Sessions already open in every limit that counts the request.", valueName: "n"))
    var open: Int = 0

    @Option(help: ArgumentHelp("Sessions started just now in every limit that counts the request.", valueName: "n"))
    var recent: Int = 0

    public func run() async throws {
        let compilation = try loadCompilation(file)
        guard let policy = compilation.policy else {
            for error in compilation.errors { print(error) }
            throw ExitCode(1)
        }
        guard let client = RequestText.client(from) else { throw ValidationError("--from: '\(from)' is not IP or IP:PORT") }
        guard let (destination, port) = RequestText.destination(to) else {
            throw ValidationError("--to: '\(to)' is not HOST:PORT (example.com:443, 192.0.2.1:80, [2001:db8::1]:443)")
        }
        guard let command = RequestFacts.Command(rawValue: command) else {
            throw ValidationError("--command: use connect, bind or udp")
        }
        guard let version = RequestFacts.Version(rawValue: version) else {
            throw ValidationError("--version: use socks4, socks4a, socks5 or http")
        }
        guard let auth = RequestFacts.AuthMethod(rawValue: auth) else { throw ValidationError("--auth: use none or password") }
        let resolvedAddress = try resolved.map { text in
            guard let address = IPAddress(text) else { throw ValidationError("--resolved: '\(text)' is not an IP address") }
            return address
        }
        let time = try at.map { text in
            guard let local = RequestText.time(iso: text) else { throw ValidationError("--at: use a time like 2026-11-30T09:00") }
            return local - Int64(policy.utcOffsetSeconds)
        }
        guard (0...SessionLimit.largestCount).contains(open), (0...SessionLimit.largestCount).contains(recent) else {
            throw ValidationError("--open and --recent: a number of sessions, 0 to \(SessionLimit.largestCount)")
        }
        let identOutcome: IdentOutcome
        switch (ident, identError) {
        case (let user?, nil): identOutcome = .userID(user)
        case (nil, let kind?):
            guard let failure = IdentFailure(rawValue: kind) else {
                throw ValidationError("--ident-error: '\(kind)' is not a failure kind")
            }
            identOutcome = .failure(failure)
        case (nil, nil): identOutcome = .failure(.unreachable)
        case (_?, _?): throw ValidationError("give --ident or --ident-error, not both")
        }
        let facts = RequestFacts(
            version: version, command: command, client: client,
            listener: IPEndpoint(address: client.address.isIPv6 ? .v6(.loopback) : .v4(.loopback), port: 1080),
            destination: destination, destinationPort: port, resolvedAddress: resolvedAddress, claimedUser: user,
            authMethod: auth, time: time)
        if groups != nil, groupsUnavailable { throw ValidationError("give --groups or --groups-unavailable, not both") }
        let groupAnswer: GroupAnswer =
            groupsUnavailable
            ? .unavailable("posed by --groups-unavailable")
            : .member(of: Set((groups ?? "").split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }))
        let engine = PolicyEngine(policy: policy)
        let explained = await engine.explain(
            facts, identLookup: { _, _ in IdentAnswer(identOutcome) }, groupLookup: { _ in groupAnswer })
        let decision = engine.applyingLimits(to: explained, facts, open: open, recent: recent)
        print(DisplayText.escaped(Explanation.describe(facts)))
        if !policy.limits.isEmpty {
            print(
                Explanation.limits(
                    policy.limits, facts: facts.attributed(by: explained), open: open, recent: recent,
                    applied: explained.verdict == .allow))
        }
        print(Explanation.render(decision, facts: facts, indent: ""))
    }
}

/// Reads a policy file and its FILE.tests, or exits with the read error.
func loadCompilation(_ file: String) throws -> PolicyCompilation {
    do {
        return try PolicyFile.read(file).compilation
    } catch {
        throw FailedStart(message: "\(error)")
    }
}

/// The text of `explain`, shared with `test` failures.
enum Explanation {
    static func describe(_ facts: RequestFacts) -> String {
        var text =
            "request: \(facts.version.rawValue) \(facts.command.rawValue) from \(facts.client) to \(facts.destination):\(facts.destinationPort)"
        if case .hostName = facts.destination {
            text += facts.resolvedAddress.map { " (resolved \($0))" } ?? " (not resolved)"
        }
        text += ", user \(facts.claimedUser ?? "none"), auth \(facts.authMethod.rawValue)"
        return text
    }

    static func render(_ decision: Decision, facts: RequestFacts, indent: String) -> String {
        var lines: [String] = []
        for step in decision.trace {
            let place = step.rule.line.map { "line \($0)" } ?? "rule"
            let label = step.rule.label.map { " \"\($0)\"" } ?? ""
            let mark = step.matched ? "match" : "no match"
            lines.append(
                "\(indent)  \(place.padding(9)) \(step.verdict.rawValue.padding(5)) \(mark.padding(8)) \(step.reason)\(label)")
        }
        if let ident = decision.ident { lines.append("\(indent)ident: \(ident)") }
        if let consulted = decision.groupsConsulted {
            let answer: String =
                switch consulted.answer {
                case .member(let groups): groups.isEmpty ? "in no group" : "in " + groups.sorted().joined(separator: ", ")
                case .noSuchUser: "no such user"
                case .unavailable(let why): "unavailable (\(why))"
                }
            lines.append("\(indent)groups of \(consulted.user): \(answer)")
        }
        // A reason may quote an identd's user-id or a claimed user: escaped, line by line.
        lines = lines.map(DisplayText.escaped)
        func named(_ rule: RuleReference) -> String { "line \(rule.line ?? 0)" + (rule.label.map { " \"\($0)\"" } ?? "") }
        var decider = decision.rule.map(named) ?? "the implicit final deny (no rule matched)"
        if let limit = decision.limit {
            decider = decision.rule.map { "\(named($0)), refused by the limit on \(named(limit))" } ?? "the limit on \(named(limit))"
        }
        lines.append(DisplayText.escaped("\(indent)decided by \(decider): \(outcome(decision, facts: facts))"))
        if let route = decision.route, decision.verdict == .allow {
            let through = route.map(\.description).joined(separator: ", then ")
            let names =
                route.first.map { $0.scheme.proxyResolves ? "the parent resolves host names" : "the gateway resolves host names" }
                ?? ""
            lines.append(DisplayText.escaped("\(indent)route: via \(through) (\(names))"))
        }
        return lines.joined(separator: "\n")
    }

    /// Each limit, whether it counts the request, and whether it is reached at the load
    /// given (`--open`, `--recent`). Limits count only what a rule allowed.
    static func limits(_ limits: [SessionLimit], facts: RequestFacts, open: Int, recent: Int, applied: Bool) -> String {
        var lines = ["limits, with \(open) open and \(recent) just started in each that counts the request"
            + (applied ? ":" : " (not applied: no rule allowed the request):")]
        for limit in limits {
            let place = limit.reference.line.map { "line \($0)" } ?? "limit"
            let label = limit.reference.label.map { " \"\($0)\"" } ?? ""
            let state: String
            if let why = limit.whyNotCounted(facts) {
                state = "\("not counted".padding(12)) \(limit.description): \(why)"
            } else {
                var subject = limit.subject(of: facts).map { "\($0)" } ?? ""
                if limit.scope == .user, facts.verifiedUser == nil, let claimed = facts.claimedUser {
                    subject += "; user \(claimed) is claimed, not verified by a password, GSS-API or identd"
                }
                let full =
                    switch limit.measure {
                    case .sessions(let most): open >= most
                    case .rate(let count, _): recent >= count
                    }
                state = "\((full ? "reached" : "room").padding(12)) \(limit.description) (\(subject))"
            }
            lines.append(DisplayText.escaped("  \(place.padding(9)) \(state)\(label)"))
        }
        return lines.joined(separator: "\n")
    }

    /// `allow, reply 0x00`, `deny, reply 93` or `deny, reply 403 Forbidden`: the exact reply
    /// the client would get.
    static func outcome(_ decision: Decision, facts: RequestFacts) -> String {
        let code = decision.replyCode(for: facts.version)
        let shown =
            switch facts.version {
            case .socks5: "0x0\(code) \(SOCKS5ReplyCode(rawValue: UInt8(truncatingIfNeeded: code)).meaning)"
            case .socks4, .socks4a: "\(code) \(SOCKS4ReplyCode(rawValue: UInt8(truncatingIfNeeded: code)).meaning)"
            case .http: "\(code) \(ProxyStatus(rawValue: code)?.reasonPhrase ?? "")"
            }
        return "\(decision.verdict.rawValue) (reply \(shown))"
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }

    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
