import AccessPolicy
import ArgumentParser
import AuditLog
import CBuildInfo
import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix
import NetAddress
import OfflineCommands
import PolicyFiles
import PrintableText
import Privileges
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve SOCKS on the listen addresses until SIGINT or SIGTERM.",
        discussion: """
            With no options: 127.0.0.1:1080, the embedded default policy (clients on \
            loopback may connect anywhere; everyone else is denied).
            Durations take a unit: 500ms, 30s, 2m, 1h; a bare number is seconds.
            """
    )

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "Address to serve on, HOST:PORT; [::1]:1080 for IPv6. Repeatable. Default: 127.0.0.1:1080.", valueName: "host:port"))
    var listen: [ListenAddress] = []

    @Option(
        help: ArgumentHelp(
            "What the listeners serve: socks, http, or both (the default; each connection's first byte tells them apart).",
            discussion: "http: HTTP proxy requests, CONNECT host:port (https_proxy=http://gw:1080) and forwarded "
                + "http:// requests (http_proxy), each decided by the same policy as SOCKS (its version is http), with "
                + "Proxy-Authorization: Basic checked against --password-file.",
            valueName: "list"))
    var protocols: String = "socks,http"

    @Option(
        help: ArgumentHelp(
            "What carries the SOCKS connections: nio (SwiftNIO's channels) or direct (epoll loops of our own). "
                + "Default: $IDENTGATE_CONNECTION_DRIVER, else nio.",
            discussion: "direct carries SOCKS CONNECT to an address that the policy decides at once, without a password, "
                + "GSS-API, identd or a parent, on raw sockets (fewer system calls per connection); every other "
                + "connection is handed to SwiftNIO during its negotiation. See docs/architecture.md.",
            valueName: "driver"))
    var connectionDriver: String?

    @Option(
        help: ArgumentHelp(
            "With --connection-driver direct: how long a loop that just had work polls for more before it sleeps "
                + "(e.g. 20us; at most 1ms). Default 0: it sleeps at once.",
            discussion: "Trades CPU for latency: one connection at a time, 20us measured 16% more connections/s; a loop "
                + "spends up to this long per busy turn polling, nothing while idle. See docs/performance.md.",
            valueName: "duration"))
    var busyPoll: DurationArgument = "0"

    @Option(
        help: ArgumentHelp(
            "Longest wait from accept to a complete request; also each policy decision's deadline.", valueName: "duration"))
    var negotiateTimeout: DurationArgument = "30s"

    @Option(
        help: ArgumentHelp(
            "Longest wait for resolving a destination name, and again for the outbound connect.",
            discussion: "SOCKS4 suggests about 2 minutes; at an egress point a destination silent for 30 s is almost never coming.",
            valueName: "duration"))
    var connectTimeout: DurationArgument = "30s"

    @Option(
        help: ArgumentHelp(
            "How long a destination name's addresses are kept after a lookup that found some; 0 to look up every time.",
            discussion: "Names that do not resolve are not kept; at most 4,096 names, the oldest dropped first. The policy "
                + "decides on the addresses connected to, cached or not.",
            valueName: "duration"))
    var resolveCache: DurationArgument = "10s"

    @Option(help: ArgumentHelp("Close a relay after this long with no bytes either way; 0 for never.", valueName: "duration"))
    var idleTimeout: DurationArgument = "1h"

    @Option(help: ArgumentHelp("On SIGINT/SIGTERM, how long running sessions may go on before exit.", valueName: "duration"))
    var shutdownGrace: DurationArgument = "10s"

    @Option(
        help: ArgumentHelp(
            "A UNIX socket for seamless upgrades: a new identgate started with the same path takes the listening "
                + "sockets over from the one running, which then drains.",
            discussion: "The running gateway hands its listeners over (SCM_RIGHTS) only to root or its own user "
                + "(SO_PEERCRED), stops accepting, and serves the sessions it has until they end or --drain-timeout "
                + "passes; not one connection is refused. Without a running gateway at the path, this one binds as usual "
                + "and listens there for its own successor.",
            valueName: "path"))
    var upgradeSocket: String?

    @Option(
        help: ArgumentHelp(
            "After a takeover (--upgrade-socket): how long the sessions running here may go on before they are closed.",
            valueName: "duration"))
    var drainTimeout: DurationArgument = "24h"

    @Option(help: ArgumentHelp("BIND: how long to wait for the inbound connection.", valueName: "duration"))
    var bindTimeout: DurationArgument = "2m"

    @Option(
        help: ArgumentHelp(
            "The policy file; SIGHUP re-reads, checks and tests it. Default: the embedded policies/default.policy.",
            discussion: "FILE.tests beside it, if present, holds more expect lines. The policy must compile and pass "
                + "its tests, at the start and at every reload; a reload that fails leaves the policy in force.",
            valueName: "file"))
    var policy: String?

    @Option(
        help: ArgumentHelp(
            "Users for SOCKS5 username/password, 'user:hash' lines (see 'identgate passwd').",
            discussion: "Hashes in crypt(3) form: yescrypt ($y$) or SHA-512 ($6$); /etc/shadow lines work as they are. "
                + "A hash of ! or * is a locked account.",
            valueName: "file"))
    var passwordFile: String?

    @Option(
        help: ArgumentHelp(
            "Check SOCKS5 and HTTP Basic passwords with PAM, under this service (/etc/pam.d/NAME).",
            discussion: "pam_authenticate, then pam_acct_mgmt (expired or locked accounts are refused), after the "
                + "privilege drop: pam_sss, pam_ldap (nslcd) and pam_krb5 work unprivileged, pam_unix cannot read "
                + "/etc/shadow for other users. With --password-file too, a user the file lists is checked by the file "
                + "alone, every other user by PAM.",
            valueName: "name"))
    var pamService: String?

    @Option(
        help: ArgumentHelp(
            "How long the directory's answer about a user's groups is kept (for 'group' rules), \"no such user\" too; "
                + "\"the directory did not answer\" is kept 5 seconds at most. Groups come from NSS (files, sssd, nslcd).",
            discussion: "A directory that does not answer fails closed: an allow rule with 'group' does not match, "
                + "a deny rule with 'group' does.",
            valueName: "duration"))
    var directoryCache: DurationArgument = "5m"

    @Option(
        help: ArgumentHelp(
            "SOCKS5 methods to offer, preferred first: none, password, gssapi. Default: gssapi with --gssapi-keytab, "
                + "then password with --password-file, else none.",
            valueName: "list"))
    var methods: String?

    @Option(
        help: ArgumentHelp(
            "A Kerberos keytab: offer GSS-API (RFC 1961). Read once, as root, before the privilege drop.", valueName: "file"))
    var gssapiKeytab: String?

    @Option(help: ArgumentHelp("The GSS-API service: the keytab's keys for SERVICE/host@REALM are used.", valueName: "name"))
    var gssapiService: String = "rcmd"

    @Option(
        help: ArgumentHelp(
            "HTTP clients' Negotiate (RFC 4559, SPNEGO): the keytab's keys for SERVICE/host@REALM are used. "
                + "Default: HTTP, when the keytab has such keys.",
            valueName: "name"))
    var httpGssapiService: String?

    @Option(
        help: ArgumentHelp(
            "Where outbound traffic leaves from (CONNECT, BIND listeners, UDP relays): an address of this host or an "
                + "interface; repeatable; the first of the destination's family is used. Default: the kernel chooses.",
            discussion: "An interface means every address it has. A destination family with no address here is "
                + "unreachable (0x03). An address that is not this host's stops the start with a message.",
            valueName: "addr|iface"))
    var external: [String] = []

    @Option(
        help: ArgumentHelp(
            "The audit log (JSON lines, hash-chained); - for standard output; off for none (benchmarks).", valueName: "file"))
    var auditLog: String = "identgate-audit.jsonl"

    @Option(
        help: ArgumentHelp(
            "An Ed25519 private key (audit keygen): sign a checkpoint every 1,000 records or 60 s, and at exit. "
                + "Read once, as root, before the privilege drop.",
            valueName: "file"))
    var auditSigningKey: String?

    @Option(help: "When to fsync the audit log: always (every batch), batch (at most once a second), none (at exit only).")
    var auditSync: AuditWriter.SyncPolicy = .batch

    @Option(help: "If the audit log cannot be written: closed (refuse new requests) or open (go on without it).")
    var auditFail: AuditFailMode = .closed

    @Option(help: ArgumentHelp("As root: after binding, run as this user, with no capabilities.", valueName: "name"))
    var user: String?

    @Option(
        help: ArgumentHelp(
            "With --user: run with this group and no supplementary groups. Default: the user's group.", valueName: "name"))
    var group: String?

    @Flag(help: "Keep running as root (not recommended): without it, root must name --user.")
    var stayRoot = false

    @Option(help: ArgumentHelp("The identd port on clients (RFC 1413: 113). For tests.", visibility: .hidden))
    var identPort: Int = 113

    @Option(
        name: .customLong("metrics-listen"),
        help: ArgumentHelp(
            "Serve Prometheus metrics (/metrics) and a health check (/healthz) over HTTP on HOST:PORT. Default: off.",
            valueName: "host:port"))
    var metricsListen: ListenAddress?

    @Option(
        help: ArgumentHelp(
            "A load balancer's network (repeatable): connections from it must start with a PROXY protocol header "
                + "(v1 or v2) naming the real client; from anywhere else one is refused.",
            valueName: "cidr"))
    var proxyProtocolFrom: [String] = []

    @Option(
        help: ArgumentHelp(
            "This gateway's name in a fleet, written into every audit record. Default: the host name.", valueName: "name"))
    var instance: String?

    @Option(help: "How much to log on standard error.")
    var logLevel = LogLevelArgument(.info)

    enum LogFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    @Option(
        help: ArgumentHelp(
            "text (a line per event), or json (an object per line, for log shippers).",
            discussion: "JSON objects carry time, level, label, source, message and metadata; text a client or identd "
                + "chose is escaped in both forms."))
    var logFormat: LogFormat = .text

    func validate() throws {
        guard (1...65535).contains(identPort) else { throw ValidationError("--ident-port: \(identPort) is not a port (1-65535)") }
        // Every check of the options alone is here (ArgumentParser runs it before `run`);
        // what needs files, sockets or the policy is checked as the gateway starts.
        if let methods, parsedMethods.count != methods.split(separator: ",").count {
            throw ValidationError("--methods: unknown method in '\(methods)'; use none, password, gssapi")
        }
        if parsedMethods.contains(.gssapi), gssapiKeytab == nil {
            throw ValidationError("--methods gssapi needs --gssapi-keytab")
        }
        if passwordFile == nil, pamService == nil, parsedMethods.contains(.usernamePassword) {
            throw ValidationError("--methods password needs --password-file or --pam-service")
        }
        if let pamService, pamService.isEmpty || pamService.contains("/") || pamService.hasPrefix(".") {
            throw ValidationError("--pam-service: '\(pamService)' is not a service name (a file name in /etc/pam.d)")
        }
        if ConnectionDriver(rawValue: connectionDriverName) == nil {
            let source = connectionDriver == nil ? "IDENTGATE_CONNECTION_DRIVER" : "--connection-driver"
            throw ValidationError("\(source): '\(DisplayText.escaped(connectionDriverName))' is neither nio nor direct")
        }
        if busyPoll.amount > GatewayConfiguration.maximumBusyPoll {
            throw ValidationError("--busy-poll: \(busyPoll) is longer than 1ms (a sleep costs less than that much polling)")
        }
        if busyPoll.amount > .zero, connectionDriverName != ConnectionDriver.direct.rawValue {
            throw ValidationError("--busy-poll applies to the direct connection driver: add --connection-driver direct")
        }
        if parsedProtocols.isEmpty || parsedProtocols.count != protocols.split(separator: ",").count {
            throw ValidationError("--protocols: '\(protocols)' is not a list of socks, http")
        }
        if let metrics = metricsListen?.endpoint, listen.contains(where: { $0.endpoint == metrics }) {
            throw ValidationError("--metrics-listen \(metrics) is also a --listen address: the metrics need a port of their own")
        }
    }

    /// `--connection-driver`, else the environment's choice (the test suites run once per
    /// driver this way), else nio.
    var connectionDriverName: String {
        connectionDriver ?? ProcessInfo.processInfo.environment["IDENTGATE_CONNECTION_DRIVER"] ?? ConnectionDriver.nio.rawValue
    }

    var parsedProtocols: [ListenerProtocol] {
        protocols.split(separator: ",").compactMap { ListenerProtocol(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
    }

    var parsedMethods: [SOCKS5AuthMethod] {
        (methods ?? "").split(separator: ",").compactMap { name in
            switch name.filter({ $0 != " " }) {
            case "none": .noAuthentication
            case "password": .usernamePassword
            case "gssapi": .gssapi
            default: nil
            }
        }
    }
}

enum AuditFailMode: String, ExpressibleByArgument, CaseIterable {
    case closed, open
}

extension AuditWriter.SyncPolicy: ExpressibleByArgument {}
