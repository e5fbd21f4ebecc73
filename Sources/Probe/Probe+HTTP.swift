import Foundation
import HTTPProxyWire
import NIOCore
import NetAddress
import PrintableText

/// `identgate probe http://[user[:password]@]gw[:port] --to HOST:PORT`: an HTTP proxy's
/// CONNECT, step by step, like the SOCKS probe (the same exit statuses).
extension Probe {
    /// The head of a proxy's answer is read up to this size.
    static let maximumAnswerHead = 16 * 1024

    func probeHTTP(_ report: inout Report) throws -> Outcome {
        guard command == "connect" else { throw UsageError(message: "--command: an HTTP proxy serves connect only") }
        var rest = url.dropFirst("http://".count)
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at].split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            user = credentials.first.flatMap { String($0).removingPercentEncoding }
            password = credentials.count == 2 ? String(credentials[1]).removingPercentEncoding : nil
            rest = rest[rest.index(after: at)...]
        }
        let server: (host: ProxyTargetHost, port: UInt16)
        do {
            server = try ProxyRequestTarget.authority(rest, defaultPort: 1080)
        } catch {
            throw UsageError(message: "'\(url)': \(error.reason)")
        }
        if let passwordFile {
            guard let line = firstLine(of: passwordFile) else { throw UsageError(message: "--password-file: cannot read \(passwordFile)") }
            password = line
        }
        guard let (destination, port) = Self.hostAndPort(to) else {
            throw UsageError(message: "--to: '\(to)' is not HOST:PORT (example.com:443, 192.0.2.1:80, [2001:db8::1]:443)")
        }
        report.note("server http://\(user.map { "\(DisplayText.escaped($0))@" } ?? "")\(server.host):\(server.port) (HTTP CONNECT, the server resolves names)")
        let total = Clock()
        let addresses: [IPAddress]
        switch server.host {
        case .address(let address): addresses = [address]
        case .name(let name): addresses = Self.resolve(name)
        }
        guard let address = addresses.first else {
            report.step(total.ms, "resolve the server", "\(server.host) does not resolve")
            return .unreachable
        }
        let endpoint = IPEndpoint(address: address, port: server.port)
        let socket: Connection
        do {
            socket = try Connection(to: endpoint, timeout: timeout)
        } catch let error as ConnectionError {
            report.step(total.ms, "tcp connect to \(endpoint)", error.message)
            return error.timedOut ? .timedOut : .unreachable
        }
        defer { socket.close() }
        report.step(total.ms, "tcp connect", "\(endpoint) from \(socket.local)")
        let authority = destination.contains(":") ? "[\(destination)]:\(port)" : "\(destination):\(port)"
        var request = "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n"
        if let user {
            let token = Data("\(user):\(password ?? "")".utf8).base64EncodedString()
            request += "Proxy-Authorization: Basic \(token)\r\n"
        }
        do {
            try socket.write(Array((request + "\r\n").utf8))
            var received = ByteBuffer()
            var head: String?
            while head == nil {
                guard try socket.read(into: &received, allowEOF: true) else { break }
                let bytes = Array(received.readableBytesView)
                if let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) {
                    head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
                    received.moveReaderIndex(forwardBy: end.upperBound)
                } else if bytes.count > Self.maximumAnswerHead {
                    report.step(total.ms, "protocol error", "no end of the answer's head in \(Self.maximumAnswerHead) bytes")
                    return .protocolError
                }
            }
            guard let head, let status = Self.status(of: head) else {
                report.step(total.ms, "protocol error", "not an HTTP answer: \(Self.printable(Array(received.readableBytesView.prefix(80))))")
                return .protocolError
            }
            let meaning = ProxyStatus(rawValue: status.code).flatMap { $0.text.isEmpty ? nil : " (\($0.text))" } ?? ""
            report.step(total.ms, "answer", DisplayText.escaped(status.line) + meaning)
            switch status.code {
            case 200..<300:
                if let send { try streamExchange(send, socket: socket, report: &report, clock: total) }
                return .granted
            case 407:
                return .authentication
            default:
                return .refused
            }
        } catch let error as ConnectionError {
            report.step(total.ms, error.timedOut ? "time-out" : "connection", error.message)
            return error.timedOut ? .timedOut : .protocolError
        }
    }

    /// The status line and its code, if `head` starts with an HTTP/1.x status line.
    static func status(of head: String) -> (line: String, code: Int)? {
        // (In Swift "\r\n" is one Character: split on scalars.)
        let line = String(String.UnicodeScalarView(head.unicodeScalars.prefix { $0 != "\r" && $0 != "\n" }))
        let parts = line.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...599).contains(code) else { return nil }
        return (line, code)
    }
}
