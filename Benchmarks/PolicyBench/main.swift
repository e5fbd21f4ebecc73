import AccessPolicy
import Glibc
import NetAddress

// Decisions per second of the compiled policy engine, on one core, for generated
// policies of realistic shape. Prints one TSV row per size:
//   rules  decisions_per_second  ns_per_decision  allowed_share
// Usage: policy-bench [SECONDS_PER_SIZE] [SIZES…]
//        policy-bench emit RULES    prints the generated policy of that size

/// A small deterministic generator, so that every run measures the same policies.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A policy text like a large organisation's: per-team source networks, per-service
/// destinations (networks and domains), port lists, some user rules, a few time
/// windows and ident rules, deny rules for blocked destinations, and a final catch-all
/// for loopback only.
func policyText(rules count: Int, using generator: inout SplitMix) -> String {
    var lines = ["timezone UTC", "net corp = 10.0.0.0/8", "ident from @corp timeout 5s"]
    let services = ["http", "https", "ssh", "8000-8999", "5432", "3306", "imaps", "1024-65535"]
    for index in 0..<count - 1 {
        let team = "10.\(index % 250).\((index / 250) % 250).0/24"
        let kind = Int.random(in: 0..<10, using: &generator)
        switch kind {
        case 0:
            lines.append("deny to .blocked\(index).example")
        case 1:
            lines.append("deny to 203.\(index % 250).\(index / 250 % 250).0/24")
        case 2:
            lines.append("allow connect from \(team) user u\(index), u\(index + 1) ident to any port https")
        case 3:
            lines.append(
                "allow connect from \(team) to .svc\(index % 500).corp.example port \(services.randomElement(using: &generator)!) time mon-fri 07:00-19:00"
            )
        default:
            lines.append(
                "allow connect from \(team) to 172.\(16 + index % 16).\(index % 250).0/24 port \(services.randomElement(using: &generator)!), \(services.randomElement(using: &generator)!)"
            )
        }
    }
    lines.append("allow from 127.0.0.0/8")
    return lines.joined(separator: "\n")
}

func requests(count: Int, rules: Int, using generator: inout SplitMix) -> [RequestFacts] {
    (0..<count).map { _ in
        let index = Int.random(in: 0..<max(1, rules), using: &generator)
        let client = IPEndpoint(address: .v4(IPv4Address(10, UInt8(index % 250), UInt8((index / 250) % 250), 7)), port: 40000)
        let destination: RequestFacts.Destination =
            Bool.random(using: &generator)
            ? .hostName("host.svc\(index % 500).corp.example")
            : .address(.v4(IPv4Address(172, UInt8(16 + index % 16), UInt8(index % 250), 9)))
        return RequestFacts(
            version: .socks5, command: .connect, client: client, listener: IPEndpoint("127.0.0.1:1080")!,
            destination: destination, destinationPort: [443, 22, 5432, 8080, 80].randomElement(using: &generator)!,
            claimedUser: Bool.random(using: &generator) ? "u\(index)" : nil, time: 1_764_576_000 + Int64(index % 7) * 86_400)
    }
}

let arguments = CommandLine.arguments.dropFirst()
// `policy-bench emit RULES`: the generated policy's text, for scripts/bench's diff row.
if arguments.first == "emit", let size = arguments.dropFirst().first.flatMap(Int.init) {
    var generator = SplitMix(seed: 42)
    print(policyText(rules: size, using: &generator))
    exit(0)
}
let seconds = arguments.first.flatMap(Double.init) ?? 2
let sizes = arguments.dropFirst().compactMap(Int.init)
print("rules\tdecisions_per_second\tns_per_decision\tallowed_share\tcompile_ms")
for size in sizes.isEmpty ? [10, 1_000, 10_000] : sizes {
    var generator = SplitMix(seed: 42)
    let text = policyText(rules: size, using: &generator)
    let compileStart = ContinuousClock.now
    let compilation = PolicyCompiler.compile(text, file: "generated")
    let compileTime = ContinuousClock.now - compileStart
    let compileMilliseconds = compileTime.components.seconds * 1000 + compileTime.components.attoseconds / 1_000_000_000_000_000
    guard let policy = compilation.policy else {
        print("generated policy has errors: \(compilation.errors.prefix(3))")
        break
    }
    let engine = PolicyEngine(policy: policy)
    let pool = requests(count: 4096, rules: size, using: &generator)
    let (decided, allowed, elapsed) = await measure(engine, pool, seconds: seconds)
    let perSecond = Double(decided) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    print("\(size)\t\(Int(perSecond))\t\(Int(1e9 / perSecond))\t\(Double(allowed * 100 / decided) / 100)\t\(compileMilliseconds)")
}

/// Nonisolated, so the loop runs on one thread without hopping to the main actor.
nonisolated func measure(_ engine: PolicyEngine, _ pool: [RequestFacts], seconds: Double) async -> (Int, Int, Duration) {
    var decided = 0
    var allowed = 0
    let clock = ContinuousClock()
    let start = clock.now
    let budget = Duration.milliseconds(Int64(seconds * 1000))
    while clock.now - start < budget {
        for facts in pool {
            // As the gateway does: without suspending unless identd must be asked.
            let decision: Decision
            if let immediate = engine.decideImmediately(facts) {
                decision = immediate
            } else {
                decision = await engine.decide(facts, identLookup: { facts, _ in IdentAnswer(.userID(facts.claimedUser ?? "nobody")) })
            }
            if decision.verdict == .allow { allowed += 1 }
        }
        decided += pool.count
    }
    return (decided, allowed, clock.now - start)
}
