import ArgumentParser
import NIOCore
import NetAddress
import PosixEndpoint
import PrintableText
import ProxyURL
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

/// `identgate probe URL --to HOST:PORT`: an operator's SOCKS client for any server, ours
/// or not. Prints every step with its time and the reply with its meaning; the exit
/// status says what happened. Blocking sockets with a time-out on every wait.
public struct Probe: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Talk to a SOCKS server or an HTTP proxy as a client and show every step, with times and the reply's meaning.",
        discussion: """
            Example: identgate probe socks5h://alice@gw:1080 --to www.example.com:443 --password-file pw
            Exit status: 0 granted; 1 refused by the server (the reply says why); 2 no acceptable \
            method or authentication failed; 3 the server cannot be reached; 4 the server broke the \
            protocol; 5 a time-out; 64 a bad argument.
            """
    )

    @Argument(
        help: "The server: socks4://, socks4a://, socks5://, socks5h://, or http:// for an HTTP proxy's CONNECT (user[:password]@host[:port]).")
    var url: String

    @Option(help: ArgumentHelp("The destination to ask for, HOST:PORT.", valueName: "host:port"))
    var to: String

    @Option(help: "connect, bind or udp.")
    var command: String = "connect"

    @Option(help: ArgumentHelp("After a grant: send this text (UDP: as one datagram) and show what comes back.", valueName: "text"))
    var send: String?

    @Option(help: ArgumentHelp("The password for the URL's user, first line of this file (keeps it off the command line).", valueName: "file"))
    var passwordFile: String?

    @Option(help: ArgumentHelp("Seconds to wait for each step.", valueName: "seconds"))
    var timeout: Double = 10

    @Flag(help: "One JSON object instead of lines.")
    var json = false

    enum Outcome: Int32 {
        case granted = 0, refused = 1, authentication = 2, unreachable = 3, protocolError = 4, timedOut = 5
    }

    public func run() throws {
        var report = Report(json: json)
        let outcome: Outcome
        do {
            outcome = try probe(&report)
        } catch let error as UsageError {
            throw ValidationError(error.message)
        }
        report.finish(outcome: outcome)
        throw ExitCode(outcome.rawValue)
    }

    struct UsageError: Error {
        var message: String
    }

    private func probe(_ report: inout Report) throws -> Outcome {
        if url.lowercased().hasPrefix("http://") { return try probeHTTP(&report) }
        var server: SOCKSURL
        do {
            server = try SOCKSURL.parse(url)
        } catch {
            throw UsageError(message: "'\(url)' \(error)")
        }
        guard timeout > 0, timeout <= 3600, timeout.isFinite else { throw UsageError(message: "--timeout: 0 to 3600 seconds") }
        if let passwordFile {
            guard let password = firstLine(of: passwordFile) else {
                throw UsageError(message: "--password-file: cannot read \(passwordFile)")
            }
            server.password = password
        }
        let socksCommand: SOCKSCommand
        switch command {
        case "connect": socksCommand = .connect
        case "bind": socksCommand = .bind
        case "udp":
            guard server.scheme.version == .socks5 else { throw UsageError(message: "--command udp needs a SOCKS5 server") }
            socksCommand = .udpAssociate
        default: throw UsageError(message: "--command: use connect, bind or udp")
        }
        guard let (destinationText, port) = Self.hostAndPort(to) else {
            throw UsageError(message: "--to: '\(to)' is not HOST:PORT (example.com:443, 192.0.2.1:80, [2001:db8::1]:443)")
        }
        let resolver = server.scheme.proxyResolves ? "the server resolves names" : "the client resolves names"
        let plain = server.writtenAsPlainSOCKS ? "; socks:// is read as socks4://" : ""
        report.note("server \(server) (\(server.scheme.version.rawValue.uppercased()), \(resolver)\(plain))")
        var destination: SOCKSHost = IPAddress(destinationText).map(SOCKSHost.init) ?? .domain(destinationText)
        if case .domain(let name) = destination, !server.scheme.proxyResolves {
            // socks4:// and socks5:// mean the client resolves, as curl does.
            let clock = Clock()
            guard let address = Self.resolve(name).first else {
                report.step(clock.ms, "resolve \(name)", "does not resolve")
                return .unreachable
            }
            guard server.scheme == .socks5 || !address.isIPv6 else {
                report.step(clock.ms, "resolve \(name)", "\(address): SOCKS4 cannot carry IPv6")
                return .unreachable
            }
            destination = SOCKSHost(address)
            report.step(clock.ms, "resolve \(name)", "\(address) (here: \(server.scheme.rawValue) means the client resolves)")
        }
        let total = Clock()
        let proxyAddresses: [IPAddress]
        switch server.host {
        case .address(let address): proxyAddresses = [address]
        case .name(let name): proxyAddresses = Self.resolve(name)
        }
        guard let proxyAddress = proxyAddresses.first else {
            report.step(total.ms, "resolve the server", "\(server.host) does not resolve")
            return .unreachable
        }
        let socket: Connection
        do {
            socket = try Connection(to: IPEndpoint(address: proxyAddress, port: server.port), timeout: timeout)
        } catch let error as ConnectionError {
            report.step(total.ms, "tcp connect to \(IPEndpoint(address: proxyAddress, port: server.port))", error.message)
            return error.timedOut ? .timedOut : .unreachable
        }
        defer { socket.close() }
        report.step(total.ms, "tcp connect", "\(IPEndpoint(address: proxyAddress, port: server.port)) from \(socket.local)")
        // A UDP ASSOCIATE names where the client will send from: not known yet (zeros).
        let udp = socksCommand == .udpAssociate
        var machine = SOCKSClientStateMachine(
            url: server, command: socksCommand, destination: udp ? .ipv4(.any) : destination, port: udp ? 0 : port)
        var replies = 0
        var buffer = ByteBuffer()
        var sent = machine.start()
        do {
            try socket.write(sent)
            while true {
                let event = machine.receive(&buffer)
                switch event {
                case .waitForMoreBytes:
                    try socket.read(into: &buffer)
                    continue
                case .methodChosen(let method, let next):
                    report.step(total.ms, "method", Self.methodName(method))
                    guard method == .noAuthentication || method == .usernamePassword else { return .authentication }
                    sent = next
                case .authenticated(let ok, let next):
                    report.step(total.ms, "username/password", ok ? "accepted" : "refused")
                    guard ok else { return .authentication }
                    sent = next
                case .protocolError(let message):
                    report.step(total.ms, "protocol error", message)
                    return .protocolError
                case .reply(let reply, let final):
                    replies += 1
                    let what =
                        socksCommand == .bind ? (replies == 1 ? "first reply (listening)" : "second reply (the peer)") : "reply"
                    report.reply(total.ms, what, reply)
                    guard reply.granted else { return .refused }
                    if !final { continue }
                    if let send {
                        try exchange(
                            send, after: reply, socket: socket, command: socksCommand, destination: destination, port: port,
                            report: &report, clock: total)
                    }
                    return .granted
                }
                if !sent.isEmpty { try socket.write(sent) }
            }
        } catch let error as ConnectionError {
            report.step(total.ms, error.timedOut ? "time-out" : "connection", error.message)
            return error.timedOut ? .timedOut : .protocolError
        }
    }

    /// After a grant: the text to the destination, then the end of our stream, and what
    /// comes back (until the peer closes, 64 KiB, or the time-out); for UDP one datagram
    /// through the relay.
    private func exchange(
        _ text: String, after reply: SOCKSClientStateMachine.Reply, socket: Connection, command: SOCKSCommand,
        destination: SOCKSHost, port: UInt16, report: inout Report, clock: Clock
    ) throws {
        let payload = Array(text.utf8)
        if command == .udpAssociate {
            var relayHost = reply.host
            if case .ipv4(let address) = relayHost, address == .any { relayHost = SOCKSHost(socket.peer.address) }
            guard case let relayAddress? = Self.address(relayHost) else { return }
            let header: [UInt8] = [0, 0, 0] + Self.addressBytes(destination, port: port)
            let answer = try Connection.datagramExchange(
                header + payload, to: IPEndpoint(address: relayAddress, port: reply.port), timeout: timeout)
            report.step(clock.ms, "udp", "sent \(payload.count) bytes; " + (answer.map { "received \(max(0, $0.count - 10)) bytes: \(Self.printable(Array($0.dropFirst(10))))" } ?? "nothing came back"))
            return
        }
        try streamExchange(text, socket: socket, report: &report, clock: clock)
    }

    /// The text to the destination through a granted tunnel, then the end of our stream,
    /// and what comes back (until the peer closes, 64 KiB, or the time-out).
    func streamExchange(_ text: String, socket: Connection, report: inout Report, clock: Clock) throws {
        let payload = Array(text.utf8)
        try socket.write(payload)
        // Then the end of the stream, so that a server that answers at EOF (an echo, an
        // HTTP/1.0 request) answers and closes rather than waiting for more.
        socket.shutdownOutput()
        report.step(clock.ms, "sent", "\(payload.count) bytes, then end of stream")
        var received = ByteBuffer()
        while received.readableBytes < 65536 {
            do {
                if try !socket.read(into: &received, allowEOF: true) { break }
            } catch let error as ConnectionError where error.timedOut {
                break
            }
        }
        report.step(clock.ms, "received", "\(received.readableBytes) bytes: \(Self.printable(Array(received.readableBytesView.prefix(200))))")
    }

    static func methodName(_ method: SOCKS5AuthMethod) -> String {
        switch method {
        case .noAuthentication: "0x00 no authentication"
        case .gssapi: "0x01 GSS-API"
        case .usernamePassword: "0x02 username/password"
        case .noAcceptableMethods: "0xFF no acceptable methods"
        default: "0x" + String(method.rawValue, radix: 16)
        }
    }

    /// Escaped: what a server or destination chose is never printed raw (the one escaper
    /// every printer uses: controls and bidirectional overrides alike).
    static func printable(_ bytes: [UInt8]) -> String {
        DisplayText.escaped(String(decoding: bytes, as: UTF8.self))
    }

    static func hostAndPort(_ text: String) -> (String, UInt16)? {
        if let endpoint = IPEndpoint(text) { return (endpoint.address.description, endpoint.port) }
        guard let colon = text.lastIndex(of: ":"), !text.hasPrefix("["), let port = UInt16(text[text.index(after: colon)...]) else {
            return nil
        }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":") else { return nil }
        return (host, port)
    }

    static func address(_ host: SOCKSHost) -> IPAddress? {
        if case .domain(let name) = host { return resolve(name).first }
        return host.address
    }

    static func addressBytes(_ host: SOCKSHost, port: UInt16) -> [UInt8] {
        let portBytes = [UInt8(port >> 8), UInt8(port & 0xff)]
        switch host {
        case .ipv4(let address): return [1] + address.octets + portBytes
        case .ipv6(let address): return [4] + address.octets + portBytes
        case .domain(let name): return [3, UInt8(min(255, name.utf8.count))] + Array(name.utf8.prefix(255)) + portBytes
        }
    }

    static func resolve(_ name: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ai_addr, let endpoint = IPEndpoint(sockaddr: address),
                !addresses.contains(endpoint.address)
            {
                addresses.append(endpoint.address)
            }
            entry = current.pointee.ai_next
        }
        return addresses
    }
}

/// Milliseconds since it was made.
struct Clock {
    private let start = Clock.now()

    var ms: Double { (Clock.now() - start) * 1000 }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// What `probe` prints: a line per step, or one JSON object at the end.
struct Report {
    let json: Bool
    private var steps: [(ms: Double, step: String, detail: String)] = []
    private var reply: SOCKSClientStateMachine.Reply?

    init(json: Bool) {
        self.json = json
    }

    mutating func note(_ text: String) {
        if !json { Self.emit(text) }
    }

    /// A line at once, also into a pipe: whoever watches a BIND probe needs the first
    /// reply's address while the probe still waits for the second.
    static func emit(_ text: String) {
        print(text)
        fflush(nil)
    }

    mutating func step(_ ms: Double, _ step: String, _ detail: String) {
        steps.append((ms, step, detail))
        if !json { Self.emit(Self.line(ms, step, detail)) }
    }

    mutating func reply(_ ms: Double, _ what: String, _ reply: SOCKSClientStateMachine.Reply) {
        self.reply = reply
        step(ms, what, "\(reply.meaning); bound \(reply.host):\(reply.port)")
    }

    static func line(_ ms: Double, _ step: String, _ detail: String) -> String {
        let tenths = Int((ms * 10).rounded())
        return "\(String(tenths / 10).leftPadded(6)).\(tenths % 10) ms  \(step): \(detail)"
    }

    func finish(outcome: Probe.Outcome) {
        guard json else {
            print("outcome: \(outcome) (exit \(outcome.rawValue))")
            return
        }
        var fields = [
            "\"outcome\":\"\(outcome)\"", "\"exit\":\(outcome.rawValue)",
            "\"steps\":[" + steps.map { "{\"ms\":\(String(format3: $0.ms)),\"step\":\(jsonString($0.step)),\"detail\":\(jsonString($0.detail))}" }.joined(separator: ",") + "]",
        ]
        if let reply {
            fields.append(
                "\"reply\":{\"code\":\(reply.code),\"meaning\":\(jsonString(reply.meaning)),\"bound\":\(jsonString("\(reply.host):\(reply.port)"))}")
        }
        print("{" + fields.joined(separator: ",") + "}")
    }

    private func jsonString(_ text: String) -> String {
        JSONText.quoted(text)
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }

    init(format3 value: Double) {
        self = String(Int((value * 1000).rounded()) / 1000) + "." + String(Int((value * 1000).rounded()) % 1000).leftPaddedZeros(3)
    }

    func leftPaddedZeros(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
