import NetAddress

/// The messages of a takeover (docs/operations.md, "Seamless upgrade"), one per
/// `HandoverSocket` message, as lines of text:
///
///     successor                          running process
///     takeover v1 pid=P          →
///                                ←       sockets v1 pid=P session=N / audit PATH / socks I ADDR … / metrics ADDR / upgrade
///                                        (the descriptors attached, in that order), or: refused REASON
///     serving (or failed REASON) →       (the successor accepts on them now)
///                                ←       stopped chain=HASH:SEQ (or chain=-): the shared audit file ends there
///                                ←       draining sessions=N … every second, then drained
public enum HandoverMessage: Equatable, Sendable {
    /// `identgate upgrade` asks how the running gateway was started, to start the new
    /// binary the same way.
    case askArguments
    /// The running gateway's command line, after the program's name.
    case arguments([String])
    case takeover(pid: Int32)
    case sockets(HandedSockets)
    case refused(reason: String)
    case serving
    case failed(reason: String)
    /// The shared audit file ends at this hash, the next record numbered `sequence`; nil:
    /// no shared file (no audit log, or standard output).
    case stopped(chain: (hash: String, sequence: UInt64)?)
    /// Sessions still running in the process taken over (nil: it counts none: no metrics).
    case draining(sessions: Int?)
    case drained

    public static func == (left: HandoverMessage, right: HandoverMessage) -> Bool {
        left.text == right.text
    }

    public var text: String {
        switch self {
        case .askArguments: "arguments v1"
        // NUL cannot be part of an argument: it separates them.
        case .arguments(let arguments): "arguments\n" + arguments.joined(separator: "\u{0}")
        case .takeover(let pid): "takeover v1 pid=\(pid)"
        case .sockets(let sockets): sockets.text
        case .refused(let reason): "refused \(Self.oneLine(reason))"
        case .serving: "serving"
        case .failed(let reason): "failed \(Self.oneLine(reason))"
        case .stopped(let chain): "stopped chain=" + (chain.map { "\($0.hash):\($0.sequence)" } ?? "-")
        case .draining(let sessions): "draining sessions=" + (sessions.map(String.init) ?? "?")
        case .drained: "drained"
        }
    }

    /// The message `text` is; nil for anything else (an older or newer identgate, or not one).
    public init?(_ text: String) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let first = lines.first else { return nil }
        let words = first.split(separator: " ", maxSplits: 1).map(String.init)
        let rest = words.count > 1 ? words[1] : ""
        switch words.first {
        case "arguments" where lines.count == 1 && rest == "v1":
            self = .askArguments
        case "arguments" where rest.isEmpty && lines.count >= 2:
            let list = text.dropFirst("arguments\n".count)
            self = .arguments(list.split(separator: "\u{0}", omittingEmptySubsequences: false).map(String.init))
        case "takeover":
            guard rest.hasPrefix("v1 pid="), let pid = Int32(rest.dropFirst("v1 pid=".count)) else { return nil }
            self = .takeover(pid: pid)
        case "sockets":
            guard let sockets = HandedSockets(lines: lines) else { return nil }
            self = .sockets(sockets)
        case "refused": self = .refused(reason: rest)
        case "serving" where lines.count == 1 && rest.isEmpty: self = .serving
        case "failed": self = .failed(reason: rest)
        case "stopped":
            guard rest.hasPrefix("chain=") else { return nil }
            let chain = rest.dropFirst("chain=".count)
            if chain == "-" {
                self = .stopped(chain: nil)
            } else {
                let parts = chain.split(separator: ":")
                guard parts.count == 2, parts[0].count == 64, let sequence = UInt64(parts[1]) else { return nil }
                self = .stopped(chain: (String(parts[0]), sequence))
            }
        case "draining":
            guard rest.hasPrefix("sessions=") else { return nil }
            let count = rest.dropFirst("sessions=".count)
            if count == "?" {
                self = .draining(sessions: nil)
            } else {
                guard let number = Int(count), number >= 0 else { return nil }
                self = .draining(sessions: number)
            }
        case "drained" where lines.count == 1 && rest.isEmpty: self = .drained
        default: return nil
        }
    }

    private static func oneLine(_ text: String) -> String {
        String(text.map { $0.isNewline ? " " : $0 })
    }
}

/// What the running process hands over: its listeners, in the order of the descriptors.
public struct HandedSockets: Equatable, Sendable {
    public enum Listener: Equatable, Sendable {
        /// A SOCKS/HTTP listener of the `index`th listen address (one per event loop).
        case gateway(index: Int, endpoint: IPEndpoint)
        case metrics(IPEndpoint)
        /// The upgrade socket itself: the successor serves the next takeover on it.
        case upgrade
    }

    /// The running process (SO_PEERCRED names the one that made the upgrade socket,
    /// which may be long gone after earlier takeovers).
    public var pid: Int32
    /// The first session number the successor may give out.
    public var firstSession: UInt64
    /// The audit log the running process writes (nil: none, or standard output).
    public var auditLog: String?
    public var listeners: [Listener]

    public init(pid: Int32, firstSession: UInt64, auditLog: String?, listeners: [Listener]) {
        self.pid = pid
        self.firstSession = firstSession
        self.auditLog = auditLog
        self.listeners = listeners
    }

    /// Session numbers are unique across a takeover: the successor starts at the next
    /// multiple of 2^32 after the running process's next number, and the running process
    /// can give out at most 2^32 more (its last connections' requests) before it exits.
    public static func firstSession(after upcoming: UInt64) -> UInt64 {
        (upcoming >> 32 &+ 1) << 32
    }

    var text: String {
        var lines = ["sockets v1 pid=\(pid) session=\(firstSession)"]
        if let auditLog { lines.append("audit \(auditLog)") }
        for listener in listeners {
            switch listener {
            case .gateway(let index, let endpoint): lines.append("socks \(index) \(endpoint)")
            case .metrics(let endpoint): lines.append("metrics \(endpoint)")
            case .upgrade: lines.append("upgrade")
            }
        }
        return lines.joined(separator: "\n")
    }

    init?(lines: [String]) {
        let words = lines.first?.split(separator: " ").map(String.init) ?? []
        guard words.count == 4, words[0] == "sockets", words[1] == "v1", words[2].hasPrefix("pid="), words[3].hasPrefix("session="),
            let pid = Int32(words[2].dropFirst("pid=".count)), let session = UInt64(words[3].dropFirst("session=".count))
        else { return nil }
        self.pid = pid
        firstSession = session
        auditLog = nil
        listeners = []
        for line in lines.dropFirst() {
            let words = line.split(separator: " ", maxSplits: 2).map(String.init)
            switch words.first {
            case "audit":
                auditLog = String(line.dropFirst("audit ".count))
            case "socks":
                guard words.count == 3, let index = Int(words[1]), (0..<1024).contains(index),
                    let endpoint = IPEndpoint(words[2])
                else { return nil }
                listeners.append(.gateway(index: index, endpoint: endpoint))
            case "metrics":
                guard words.count == 2, let endpoint = IPEndpoint(words[1]) else { return nil }
                listeners.append(.metrics(endpoint))
            case "upgrade" where words.count == 1:
                listeners.append(.upgrade)
            default:
                return nil
            }
        }
    }
}
