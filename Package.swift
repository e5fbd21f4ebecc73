// swift-tools-version:6.0
import PackageDescription

// Linux only: the code uses Glibc, Linux socket options and /proc.
//
// Layers, each depending only on the ones above it:
//   NetAddress      pure IP address and CIDR values
//   PrintableText   text others chose, made safe to print: terminal/log escaping, JSON strings
//   PosixEndpoint   the one conversion between IPEndpoint and the socket calls' sockaddr
//   ProxyURL        SOCKS URLs (socks5h://user@gw:1080): parents in the policy, servers for probe
//   SOCKSWire       pure SOCKS 4/4a/5 and RFC 1929 codecs and the negotiation state machine
//   ProxyProtocol   pure PROXY protocol v1/v2 header parser (clients behind a load balancer)
//   HTTPProxyWire   pure HTTP proxy pieces: request targets, the proxy's own answers, Basic
//   AccessPolicy    pure request facts -> decision engine, and the policy language
//   IdentProtocol   pure RFC 1413 query and reply
//   SOCKSSession    pure session state machines (CONNECT, BIND, UDP's destinations) and the
//                   wire <-> policy vocabulary (SOCKS requests and ident replies as facts)
//   AuditLog        audit records, the hash chain, reading log files (plain and gzip)
//   PolicyFiles     a policy file and its tests from disk, with the SHA-256 of what was compiled
//   PolicyDiff      pure: which requests two policies decide differently, over the whole request space
//   DanteImport     pure: a Dante sockd.conf as a policy and a run command line, with warnings
//   CommandSupport  what every command shares: running async work to its end, a failed start
//   OfflineCommands check, test, explain, diff, audit: files and the pure core, no SwiftNIO I/O
//   Gateway         SwiftNIO handlers, relay, resolver, ident client, audit writer (all the I/O)
//   identgate       the command line: run (Gateway) and the offline commands
// The commit `identgate --version` names: IDENTGATE_COMMIT if set (scripts/package sets
// it from `git describe`), else the package's own git state as SwiftPM reads it.
let buildCommit: String = {
    if let commit = Context.environment["IDENTGATE_COMMIT"], !commit.isEmpty { return commit }
    guard let git = Context.gitInformation else { return "unknown" }
    return String(git.currentCommit.prefix(12)) + (git.hasUncommittedChanges ? "-modified" : "")
}()

let package = Package(
    name: "identgate",
    products: [
        .executable(name: "identgate", targets: ["identgate"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // The metrics endpoint's registry and exposition format (`--metrics-listen`).
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Counts allocations for the allocation guard (Tests/AllocationGuard) only.
        .package(url: "https://github.com/ordo-one/malloc-interposer.git", from: "1.6.1"),
    ],
    targets: [
        .target(name: "NetAddress"),
        .target(name: "PrintableText"),
        .target(name: "PosixEndpoint", dependencies: ["NetAddress"]),
        // SOCKS URLs (socks5h://user@gw:1080): the policy names parents by them, the wire
        // speaks to them.
        .target(name: "ProxyURL", dependencies: ["NetAddress"]),
        .target(
            name: "SOCKSWire",
            dependencies: ["NetAddress", "ProxyURL", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(name: "AccessPolicy", dependencies: ["NetAddress", "ProxyURL"]),
        // HAProxy's PROXY protocol (v1 and v2): the real client behind a load balancer.
        .target(name: "ProxyProtocol", dependencies: ["NetAddress"]),
        // HTTP proxy requests' targets, the proxy's own answers, Basic credentials (the
        // head itself is NIOHTTP1's to parse).
        .target(name: "HTTPProxyWire", dependencies: ["NetAddress"]),
        // NIOHTTP1's request decoder without a channel of its own (the direct driver's HTTP heads).
        .target(
            name: "HTTPHead",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .target(name: "IdentProtocol"),
        .target(
            name: "SOCKSSession",
            dependencies: ["NetAddress", "ProxyURL", "SOCKSWire", "AccessPolicy", "IdentProtocol", "HTTPProxyWire"]),
        .target(
            name: "AuditLog",
            dependencies: [
                "AccessPolicy", "NetAddress", "PrintableText", "CZlib", .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(name: "PolicyFiles", dependencies: ["AccessPolicy", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "PolicyDiff", dependencies: ["AccessPolicy", "NetAddress", "ProxyURL"]),
        .target(name: "DanteImport", dependencies: ["NetAddress", "PolicyDiff"]),
        .target(
            name: "CommandSupport", dependencies: [.product(name: "NIOConcurrencyHelpers", package: "swift-nio")]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CCrypt", path: "Sources/CCrypt"),
        .target(name: "CPrivileges", linkerSettings: [.linkedLibrary("cap")]),
        // Linux-PAM, for --pam-service (Debian: libpam0g-dev).
        .target(name: "CPAM", linkerSettings: [.linkedLibrary("pam")]),
        // The commit the binary was built from, for `--version` and the build_info metric.
        .target(name: "CBuildInfo", cSettings: [.define("IDENTGATE_COMMIT", to: "\"\(buildCommit)\"")]),
        // MIT Kerberos' GSS-API, for RFC 1961 (Debian: libkrb5-dev).
        .target(name: "CGSSAPI", linkerSettings: [.linkedLibrary("gssapi_krb5"), .linkedLibrary("krb5")]),
        .target(name: "Privileges", dependencies: ["CPrivileges", "NetAddress", "PosixEndpoint"]),
        // epoll and eventfd, which Swift's Glibc module does not bring (the direct driver).
        .target(name: "CDirectIO"),
        .target(
            name: "Gateway",
            dependencies: [
                "NetAddress", "SOCKSWire", "SOCKSSession", "AccessPolicy", "IdentProtocol", "AuditLog", "PrintableText", "PosixEndpoint", "CCrypt",
                "CGSSAPI", "CPAM", "ProxyURL", "ProxyProtocol", "HTTPProxyWire", "HTTPHead", "Privileges", "CDirectIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The offline commands (check, test, explain, audit verify|show|summary|replay):
        // no NIOPosix, no Gateway; they read files and run the pure engine.
        .target(
            name: "OfflineCommands",
            dependencies: [
                "AccessPolicy", "AuditLog", "PolicyFiles", "PolicyDiff", "DanteImport", "SOCKSSession", "SOCKSWire", "NetAddress", "PrintableText",
                "HTTPProxyWire", "CommandSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // `identgate probe`: a SOCKS client on blocking sockets, for operators.
        .target(
            name: "Probe",
            dependencies: [
                "SOCKSWire", "NetAddress", "PosixEndpoint", "ProxyURL", "PrintableText", "HTTPProxyWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "identgate",
            dependencies: [
                "Gateway", "OfflineCommands", "Probe", "PolicyFiles", "AccessPolicy", "NetAddress", "SOCKSWire", "Privileges", "AuditLog",
                "PrintableText", "CommandSupport", "CBuildInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The allocation guard: allocations per decision and per relayed connection
        // against recorded bounds (run with the interposer preloaded; scripts/test).
        .target(name: "CRelayProbe", path: "Tests/CRelayProbe"),
        .executableTarget(
            name: "allocation-guard",
            dependencies: [
                "Gateway", "AccessPolicy", "NetAddress", "PolicyFiles", "CRelayProbe",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/AllocationGuard"
        ),
        .testTarget(name: "NetAddressTests", dependencies: ["NetAddress", "PosixEndpoint"]),
        .testTarget(name: "PrintableTextTests", dependencies: ["PrintableText"]),
        .testTarget(
            name: "SOCKSWireTests",
            dependencies: ["SOCKSWire", "NetAddress", "ProxyURL", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "ProxyURLTests", dependencies: ["ProxyURL", "NetAddress"]),
        .testTarget(name: "ProxyProtocolTests", dependencies: ["ProxyProtocol", "NetAddress"]),
        .testTarget(name: "HTTPProxyWireTests", dependencies: ["HTTPProxyWire", "NetAddress"]),
        .testTarget(name: "AccessPolicyTests", dependencies: ["AccessPolicy", "NetAddress", "ProxyURL"]),
        .testTarget(
            name: "SOCKSSessionTests",
            dependencies: ["SOCKSSession", "SOCKSWire", "AccessPolicy", "NetAddress", "ProxyURL", "IdentProtocol"]),
        .testTarget(name: "IdentProtocolTests", dependencies: ["IdentProtocol"]),
        .testTarget(name: "AuditLogTests", dependencies: ["AuditLog"]),
        .testTarget(name: "PolicyFilesTests", dependencies: ["PolicyFiles", "AuditLog", "AccessPolicy"]),
        .testTarget(name: "PolicyDiffTests", dependencies: ["PolicyDiff", "AccessPolicy", "NetAddress"]),
        .testTarget(name: "DanteImportTests", dependencies: ["DanteImport", "AccessPolicy"]),
        .testTarget(name: "PrivilegesTests", dependencies: ["Privileges", "NetAddress", "PosixEndpoint"]),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "SOCKSWire", "SOCKSSession", "AccessPolicy", "NetAddress", "ProxyProtocol", "HTTPHead",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// Benchmarks are built only when asked for (scripts/bench sets IDENTGATE_BENCH=1), so
// that `swift build` and CI do not pay for them.
if Context.environment["IDENTGATE_BENCH"] != nil {
    package.targets.append(
        .executableTarget(
            name: "policy-bench", dependencies: ["AccessPolicy", "NetAddress"], path: "Benchmarks/PolicyBench"))
    package.targets.append(.executableTarget(name: "audit-bench", dependencies: ["AuditLog"], path: "Benchmarks/AuditBench"))
}

// libFuzzer harnesses, built only by scripts/fuzz (IDENTGATE_FUZZ=1, with
// -sanitize=fuzzer,address, in .build-fuzz): libFuzzer supplies `main`.
if Context.environment["IDENTGATE_FUZZ"] != nil {
    let fuzzFlags: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]
    package.targets.append(
        .executableTarget(
            name: "fuzz-policy", dependencies: ["AccessPolicy"], path: "Tests/Fuzz/FuzzPolicy", swiftSettings: fuzzFlags))
    package.targets.append(
        .executableTarget(
            name: "fuzz-ident", dependencies: ["IdentProtocol", "SOCKSSession", "AccessPolicy"], path: "Tests/Fuzz/FuzzIdent",
            swiftSettings: fuzzFlags))
    package.targets.append(
        .executableTarget(
            name: "fuzz-socks", dependencies: ["SOCKSWire", .product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/Fuzz/FuzzSOCKS", swiftSettings: fuzzFlags))
    package.targets.append(
        .executableTarget(
            name: "fuzz-http",
            dependencies: [
                "HTTPProxyWire", "HTTPHead", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Tests/Fuzz/FuzzHTTP", swiftSettings: fuzzFlags))
    package.targets.append(
        .executableTarget(
            name: "fuzz-audit", dependencies: ["AuditLog", "PrintableText"], path: "Tests/Fuzz/FuzzAudit", swiftSettings: fuzzFlags))
}
