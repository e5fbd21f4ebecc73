import NetAddress
import Synchronization
import Testing

@testable import AccessPolicy

/// Compiles policy text that must have no errors.
func policy(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> Policy {
    let compilation = PolicyCompiler.compile(text, file: "test.policy")
    #expect(compilation.errors.isEmpty, "\(compilation.errors)", sourceLocation: sourceLocation)
    return compilation.policy ?? Policy(rules: [])
}

/// The first diagnostic as `line:col: severity: message`.
func diagnostics(_ text: String, tests: String? = nil) -> [String] {
    PolicyCompiler.compile(text, file: "p", tests: tests.map { ($0, "p.tests") }).diagnostics.map {
        "\($0.line):\($0.column): \($0.severity.rawValue): \($0.message)"
    }
}

func facts(
    _ version: RequestFacts.Version = .socks5, _ command: RequestFacts.Command = .connect,
    from client: String = "10.1.2.3:40000", to destination: String = "192.0.2.1:80", resolved: String? = nil,
    user: String? = nil, auth: RequestFacts.AuthMethod = .none, time: Int64? = nil
) -> RequestFacts {
    let (target, port) = RequestText.destination(destination)!
    return RequestFacts(
        version: version, command: command, client: RequestText.client(client)!, listener: IPEndpoint("127.0.0.1:1080")!,
        destination: target, destinationPort: port, resolvedAddress: resolved.flatMap(IPAddress.init), claimedUser: user,
        authMethod: auth, time: time)
}

/// Counts the ident lookups an engine makes and answers with a fixed outcome.
final class IdentCounter: Sendable {
    let answer: IdentOutcome
    private let count = Mutex(0)

    init(_ answer: IdentOutcome) { self.answer = answer }

    var lookups: Int { count.withLock { $0 } }

    var lookup: IdentLookup {
        { _, _ in
            self.count.withLock { $0 += 1 }
            return IdentAnswer(self.answer)
        }
    }
}
