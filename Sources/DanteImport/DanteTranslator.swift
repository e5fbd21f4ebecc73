import NetAddress
import PolicyDiff

/// `identgate import dante`: a Dante `sockd.conf` as an identgate policy and `run` command
/// line. Dante's order is kept (client rules, then socks rules, first match, the implicit
/// block), with its semantics as they are: what identgate cannot say the same way is a
/// `file:line: warning:` and a comment in the policy, never dropped silently.
public struct DanteTranslation: Sendable {
    public var policy: String
    public var runArguments: [String]
    public var warnings: [String]
}

public struct DanteTranslator {
    let file: String
    /// A service name's port, from the services database as Dante reads it.
    let servicePort: (String) -> Int?
    var warnings: [String] = []
    var lines: [String] = []
    var usesIdent = false
    /// The clients Dante's client rules pass, when every allow rule says them instead of a
    /// deny for the others.
    var clientsPassed: IntervalSet?

    public static func translate(_ config: DanteConfig, file: String, servicePort: @escaping (String) -> Int?) -> DanteTranslation {
        var translator = DanteTranslator(file: file, servicePort: servicePort)
        return translator.run(config)
    }

    mutating func warn(_ line: Int, _ message: String) {
        warnings.append("\(file):\(line): warning: \(message)")
        lines.append("# warning (line \(line)): \(message)")
    }

    private mutating func run(_ config: DanteConfig) -> DanteTranslation {
        let arguments = runArguments(config)
        let methods = Set(config.settings.filter { $0.key == "socksmethod" || $0.key == "method" }.flatMap(\.values))
        clientRules(config.blocks.filter { $0.kind == .client }, internal: internalNetworks(config))
        let routes = routeParents(config.blocks.filter { $0.kind == .route })
        for block in config.blocks where block.kind == .socks {
            socksRule(block, globalMethods: methods, via: routes)
        }
        var header = ["# Imported from \(file) by `identgate import dante`.", "# Run it with:", "#   identgate run " + arguments.joined(separator: " ")]
        if !warnings.isEmpty { header.append("# \(warnings.count) warning(s): see the '# warning' lines below.") }
        if usesIdent {
            // rfc931: Dante asks identd with a fixed 10 s time-out, for every client.
            header.append("ident from any timeout 10s")
        }
        let policy = (header + [""] + lines + ["", "# Dante blocks what no rule passes; so does identgate."]).joined(separator: "\n") + "\n"
        return DanteTranslation(policy: policy, runArguments: arguments, warnings: warnings)
    }

    // MARK: Server settings

    private mutating func runArguments(_ config: DanteConfig) -> [String] {
        var arguments: [String] = []
        var methods: [String] = []
        for setting in config.settings {
            let values = setting.values
            switch setting.key {
            case "internal":
                if let (address, port) = listenAddress(values, line: setting.line) { arguments += ["--listen", address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"] }
            case "external":
                if let address = values.first, IPAddress(address) != nil {
                    arguments += ["--external", address]
                } else {
                    warn(setting.line, "external: \(values.joined(separator: " ")): identgate takes an address, not an interface name (--external ADDRESS)")
                }
            case "socksmethod", "method":
                for method in values {
                    switch method {
                    case "none", "rfc931": methods.append("none")
                    case "username", "pam", "pam.username": methods.append("password")
                    case "gssapi": methods.append("gssapi")
                    default: warn(setting.line, "socksmethod \(method): identgate has no such method")
                    }
                    if method.hasPrefix("pam"), !arguments.contains("--pam-service") { arguments += ["--pam-service", "sockd"] }
                    if method == "rfc931" { usesIdent = true }
                }
            case "clientmethod":
                if values.contains("rfc931") { usesIdent = true }
            case "user.unprivileged", "user.notprivileged":
                if let user = values.first { arguments += ["--user", user] }
            case "timeout.negotiate":
                if let seconds = values.first.flatMap(Int.init) { arguments += ["--negotiate-timeout", "\(seconds)s"] }
            case "timeout.io":
                if let seconds = values.first.flatMap(Int.init) {
                    if seconds == 0 {
                        warn(setting.line, "timeout.io: 0 (never): identgate's --idle-timeout is always finite; 24h used")
                        arguments += ["--idle-timeout", "24h"]
                    } else {
                        arguments += ["--idle-timeout", "\(seconds)s"]
                    }
                }
            case "user.privileged", "user.libwrap", "logoutput", "errorlog", "debug":
                break  // identgate binds as root and drops to --user; it logs to stderr and the audit log
            default:
                warn(setting.line, "\(setting.key): not translated (identgate has no such setting)")
            }
        }
        let offered = methods.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        if !offered.isEmpty { arguments += ["--methods", offered.joined(separator: ",")] }
        if arguments.contains("--methods"), offered.contains("password"), !arguments.contains("--pam-service") {
            arguments += ["--password-file", "FILE"]
            warnings.append("\(file): warning: socksmethod username checks the system's passwords: give identgate --pam-service (a PAM service for them) or --password-file")
        }
        return arguments
    }

    private mutating func listenAddress(_ values: [String], line: Int) -> (String, Int)? {
        guard let first = values.first else { return nil }
        let port = Self.portValue(values) ?? 1080
        if IPAddress(first) != nil { return (first, port) }
        warn(line, "internal: \(first): an interface name; identgate listens on addresses (0.0.0.0 used)")
        return ("0.0.0.0", port)
    }

    /// `port = 1080` after an address.
    private static func portValue(_ values: [String]) -> Int? {
        guard let index = values.firstIndex(of: "port") else { return nil }
        return values[(index + 1)...].first { Int($0) != nil }.flatMap(Int.init)
    }

    private func internalNetworks(_ config: DanteConfig) -> [IPNetwork] {
        config.settings.filter { $0.key == "internal" }.compactMap { $0.values.first.flatMap(IPNetwork.init) }
    }
}
