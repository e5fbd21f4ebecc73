import NetAddress
import PolicyDiff

extension DanteTranslator {
    // MARK: client rules

    /// Dante's client rules decide on the TCP connection, before any request, first match,
    /// block when none matches: here, the clients they block, denied before every rule.
    mutating func clientRules(_ blocks: [DanteConfig.Block], internal listening: [IPNetwork]) {
        var undecided = IntervalSet.allAddresses
        var blocked = IntervalSet.empty
        var lastLine = 0
        for block in blocks {
            lastLine = block.line
            guard let from = endpoint(block.values("from") ?? ["0/0"], line: block.line, key: "from:") else { continue }
            if from.ports != nil { warn(block.line, "client rule: from: … port (the client's own port): identgate cannot say it; ignored") }
            if let to = block.values("to"), let endpoint = endpoint(to, line: block.line, key: "to:"), case .networks(let networks) = endpoint.address,
                !listening.isEmpty, !listening.contains(where: { address in networks.contains { $0.contains(address.address) } })
            {
                warn(block.line, "client rule for another internal address than this gateway's: left out")
                continue
            }
            if block.values("clientmethod")?.contains("rfc931") == true || block.values("socksmethod")?.contains("rfc931") == true {
                warn(block.line, "clientmethod rfc931: identgate asks identd per request, on the rules that say `ident`")
            }
            let covered: IntervalSet
            switch from.address {
            case .any: covered = .allAddresses
            case .networks(let networks): covered = IntervalSet(networks: networks)
            case .hostName, .domain:
                warn(block.line, "client rule from a host name: identgate never resolves clients' names; left out")
                continue
            }
            if block.passes == false { blocked = blocked.union(undecided.intersection(covered)) }
            undecided = undecided.subtracting(covered)
        }
        // Clients no client rule passes are blocked too.
        blocked = blocked.union(undecided)
        if blocked.isEmpty { return }
        if blocked == .allAddresses {
            if blocks.isEmpty {
                warnings.append("\(file): warning: no client rules: Dante refuses every connection, and so does this policy")
                lines.append("# warning: no client rules: Dante refuses every connection")
            } else {
                warn(lastLine, "no client rule passes any client: every connection is refused")
            }
            lines.append("deny label \"\(file): client rules\"")
            return
        }
        // Either a deny for the blocked clients first, or, when the passed ones are fewer
        // blocks (the usual "these networks, nobody else"), those on every allow rule.
        let passed = IntervalSet.allAddresses.subtracting(blocked)
        if passed.cidrs.count < blocked.cidrs.count {
            clientsPassed = passed
        } else {
            lines.append("deny from \(blocked.cidrs.joined(separator: ", ")) label \"\(file): client rules\"")
        }
        warnings.append(
            "\(file):\(blocks.first?.line ?? 0): warning: Dante resets a connection its client rules block, with no reply; identgate answers it with a refusal"
        )
    }

    // MARK: route

    /// The parents every allowed request goes through, when the routes say so simply: a
    /// route for every client and destination (`via: direct` or a SOCKS server). Anything
    /// else is a warning.
    mutating func routeParents(_ blocks: [DanteConfig.Block]) -> String? {
        var parents: [String] = []
        for block in blocks {
            let from = block.values("from") ?? ["0/0"]
            let to = block.values("to") ?? ["0/0"]
            guard let via = block.values("via"), let host = via.first else {
                warn(block.line, "route without via: left out")
                continue
            }
            guard from.first == "0/0", to.first == "0/0", from.count == 1, to.count == 1 else {
                warn(block.line, "route for some clients or destinations only: identgate's `via` belongs to allow rules; not translated")
                continue
            }
            if host == "direct" { continue }
            let port = via.firstIndex(of: "port").flatMap { index in via[(index + 1)...].first { Int($0) != nil } } ?? "1080"
            let protocols = block.values("proxyprotocol") ?? ["socks_v5"]
            let scheme = protocols.contains("socks_v5") ? "socks5" : protocols.contains("socks_v4") ? "socks4a" : nil
            guard let scheme else {
                warn(block.line, "route through \(protocols.joined(separator: " ")): identgate's parents are SOCKS servers; left out")
                continue
            }
            parents.append("\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)")
        }
        if !blocks.isEmpty {
            warnings.append(
                "\(file):\(blocks[0].line): warning: with routes, Dante refuses a request no route covers (0x03 / 91); identgate connects such a request directly"
            )
        }
        return parents.isEmpty ? nil : parents.joined(separator: ", ")
    }

    // MARK: socks rules

    /// One socks rule as identgate rules: one per way the client may have authenticated
    /// (an identgate rule says one `auth`, or `ident`).
    mutating func socksRule(_ block: DanteConfig.Block, globalMethods: Set<String>, via parents: String?) {
        let line = block.line
        guard let from = endpoint(block.values("from") ?? ["0/0"], line: line, key: "from:"),
            let to = endpoint(block.values("to") ?? ["0/0"], line: line, key: "to:")
        else { return }
        if from.ports != nil { warn(line, "from: … port (the client's own port): identgate cannot say it; left out of the rule") }
        var words = [block.passes == true ? "allow" : "deny"]
        var commands: [String] = []
        for command in block.values("command") ?? [] {
            switch command {
            case "connect": commands.append("connect")
            case "bind": commands.append("bind")
            case "udpassociate": commands.append("udp")
            case "bindreply", "udpreply": warn(line, "command \(command): identgate decides replies with the request's own rule; left out")
            default: warn(line, "command \(command): unknown")
            }
        }
        if block.values("command") != nil, commands.isEmpty {
            warn(line, "no command identgate decides: rule left out")
            return
        }
        if let protocols = block.values("protocol"), protocols == ["udp"], commands.isEmpty { commands = ["udp"] }
        if !commands.isEmpty { words.append(commands.joined(separator: ", ")) }
        if commands.contains("bind"), block.values("to") != nil {
            warn(line, "command bind with to:: Dante matches the address it binds itself, not the request's")
        }
        if block.passes == true, let passed = clientsPassed {
            // Only clients the client rules pass get this far.
            var clients = passed
            if case .networks(let networks) = from.address { clients = clients.intersection(IntervalSet(networks: networks)) }
            guard !clients.isEmpty else {
                warn(line, "no client this rule passes gets past the client rules: left out")
                return
            }
            words += ["from", clients.cidrs.joined(separator: ", ")]
        } else if let clients = from.addressWords {
            words += ["from", clients]
        }
        if let address = to.addressWords { words += ["to", address] }
        if let ports = to.portWords { words += ["port", ports] }
        if let versions = block.values("proxyprotocol") {
            let names = versions.compactMap { ["socks_v4": "socks4, socks4a", "socks_v5": "socks5"][$0] }
            if !names.isEmpty { words += ["version", names.joined(separator: ", ")] }
        }
        if let users = block.values("user") { words += ["user", users.joined(separator: ", ")] }
        if let groups = block.values("group") { words += ["group", groups.joined(separator: ", ")] }
        for key in ["bandwidth", "redirect", "libwrap", "session.throttle", "session.state.key", "timeout.io", "timeout.negotiate"]
        where block.values(key) != nil {
            warn(line, "\(key): not translated")
        }
        let methods = Set(block.values("socksmethod") ?? block.values("method") ?? [])
        let label = "label \"\(file):\(line)\""
        var alternatives: [[String]] = []
        if methods.isEmpty {
            alternatives = [[]]
            if block.values("user") != nil {
                // Dante's `user:` is an authenticated name; a name a SOCKS4 client only claims never matches.
                alternatives = (globalMethods.isEmpty ? ["username"] : globalMethods.sorted()).compactMap(Self.authWords)
            }
        } else {
            alternatives = methods.sorted().compactMap(Self.authWords)
            for method in methods where Self.authWords(method) == nil { warn(line, "socksmethod \(method): not translated") }
        }
        if alternatives.contains(where: { $0.contains("ident") }) {
            usesIdent = true
            warn(line, "rfc931: identgate also compares identd's answer with the SOCKS4 USERID (Dante ignores the USERID), and takes any user-id, not only local users")
        }
        var via: [String] = []
        if block.passes == true, let parents { via = ["via", parents] }
        for extra in alternatives {
            lines.append((words + extra + via + [label]).joined(separator: " "))
        }
        if let most = block.values("session.max")?.first.flatMap(Int.init) {
            var limit = ["limit", "sessions", "\(most)", "total"]
            if let clients = from.addressWords { limit += ["from", clients] }
            if let users = block.values("user") { limit += ["user", users.joined(separator: ", ")] }
            if block.values("to") != nil { warn(line, "session.max: identgate's limits do not look at the destination; counted for the rule's clients") }
            lines.append((limit + ["label \"\(file):\(line) session.max\""]).joined(separator: " "))
        }
    }

    /// A Dante method as identgate conditions; nil when there is none.
    static func authWords(_ method: String) -> [String]? {
        switch method {
        case "none": ["auth", "none"]
        case "username", "pam", "pam.username": ["auth", "password"]
        case "gssapi": ["auth", "gssapi"]
        case "rfc931": ["auth", "none", "ident"]
        default: nil
        }
    }
}
