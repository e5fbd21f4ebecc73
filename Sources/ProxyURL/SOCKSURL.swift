import NetAddress

/// A SOCKS proxy named by URL: `socks5h://alice:secret@gw.example:1080`,
/// `socks4a://10.0.0.1`, `socks5://[2001:db8::1]:1080`. What `identgate probe` takes and
/// what a policy names a parent by (docs/policy-language.md, "SOCKS URLs").
public struct SOCKSURL: Hashable, Sendable, CustomStringConvertible {
    public enum Scheme: String, Hashable, Sendable, CaseIterable {
        /// SOCKS4: the client resolves the destination (IPv4 only).
        case socks4
        /// SOCKS4a: the proxy resolves a destination name.
        case socks4a
        /// SOCKS5: the client resolves the destination.
        case socks5
        /// SOCKS5, the proxy resolves a destination name (curl's `socks5h`).
        case socks5h

        /// SOCKS5 (with or without remote resolution), else SOCKS4.
        public var isSOCKS5: Bool { self == .socks5 || self == .socks5h }

        /// The proxy, not the client, resolves a destination name.
        public var proxyResolves: Bool { self == .socks4a || self == .socks5h }
    }

    /// Where the proxy is: an address, or a name the client resolves to reach it.
    public typealias Host = NetworkHost

    public var scheme: Scheme
    public var host: Host
    public var port: UInt16
    /// SOCKS5: the RFC 1929 user; SOCKS4: the USERID.
    public var user: String?
    public var password: String?
    /// `socks://` was written: curl and browsers read it as SOCKS4.
    public var writtenAsPlainSOCKS = false

    public static let defaultPort: UInt16 = 1080

    public init(scheme: Scheme, host: Host, port: UInt16 = Self.defaultPort, user: String? = nil, password: String? = nil) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.user = user
        self.password = password
    }

    /// The URL without its password: what logs and the audit log show.
    public var description: String {
        let userPart = user.map { Self.percentEncoded($0) + "@" } ?? ""
        return "\(scheme.rawValue)://\(userPart)\(host):\(port)"
    }

    /// Why a text is not a SOCKS URL, and where (a 0-based character offset).
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        public var offset: Int
        public var message: String
        public var description: String { "at character \(offset + 1): \(message)" }
    }

    /// Parses `SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/]`. `socks://` is SOCKS4, as curl
    /// (7.88.1, measured) and Chromium read it; write `socks4://` or `socks5h://` to say
    /// which. User and password are percent-decoded; IPv6 is in brackets.
    public static func parse(_ text: String) throws(ParseError) -> SOCKSURL {
        let characters = Array(text)
        guard let separator = (0..<max(0, characters.count - 2)).first(where: { characters[$0..<($0 + 3)] == [":", "/", "/"] })
        else {
            throw ParseError(offset: 0, message: "a SOCKS URL starts with socks4://, socks4a://, socks5:// or socks5h://")
        }
        let schemeText = String(characters[..<separator]).lowercased()
        var plain = false
        let scheme: Scheme
        if schemeText == "socks" {
            scheme = .socks4
            plain = true
        } else if let named = Scheme(rawValue: schemeText) {
            scheme = named
        } else {
            throw ParseError(
                offset: 0,
                message: "unknown scheme '\(schemeText)': use socks4, socks4a, socks5, socks5h (or socks, read as socks4)")
        }
        var index = separator + 3
        var rest = String(characters[index...])
        // A trailing slash is allowed; a path (the network list of the old socks: URI
        // draft, as SSH documents it) is not: rules say which destinations use a parent.
        if let slash = rest.firstIndex(of: "/") {
            let tail = rest[rest.index(after: slash)...]
            if !tail.isEmpty {
                throw ParseError(
                    offset: index + rest.distance(from: rest.startIndex, to: slash),
                    message: "a path is not supported (the network list of the socks: URI draft); say in the policy which destinations use this proxy")
            }
            rest = String(rest[..<slash])
        }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            let parts = userInfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let decodedUser = percentDecoded(String(parts[0])), !decodedUser.isEmpty else {
                throw ParseError(offset: index, message: "the user is empty or not valid percent-encoding")
            }
            user = decodedUser
            if parts.count == 2 {
                guard let decoded = percentDecoded(String(parts[1])) else {
                    throw ParseError(
                        offset: index + parts[0].count + 1, message: "the password is not valid percent-encoding")
                }
                password = decoded
            }
            guard decodedUser.utf8.count <= 255, (password?.utf8.count ?? 0) <= 255 else {
                throw ParseError(offset: index, message: "user and password are at most 255 bytes each (RFC 1929)")
            }
            index += userInfo.count + 1
            rest = String(rest[rest.index(after: at)...])
        }
        var hostText = rest
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw ParseError(offset: index, message: "an IPv6 address in brackets needs its ']'")
            }
            hostText = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                let closeOffset: Int = index + rest.distance(from: rest.startIndex, to: close)
                guard after.hasPrefix(":") else {
                    throw ParseError(offset: closeOffset + 1, message: "expected ':PORT' after ']'")
                }
                portText = after.dropFirst()
            }
            guard case .v6(let address)? = IPAddress(hostText) else {
                throw ParseError(offset: index + 1, message: "'\(hostText)' is not an IPv6 address")
            }
            let portOffset: Int = index + rest.count - (portText?.count ?? 0)
            let port = try Self.port(portText, offset: portOffset)
            var url = SOCKSURL(scheme: scheme, host: .address(.v6(address)), port: port, user: user, password: password)
            url.writtenAsPlainSOCKS = plain
            return url
        }
        if rest.filter({ $0 == ":" }).count > 1 {
            throw ParseError(offset: index, message: "an IPv6 address goes in brackets: socks5://[2001:db8::1]:1080")
        }
        if let colon = rest.lastIndex(of: ":") {
            hostText = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        }
        guard !hostText.isEmpty else { throw ParseError(offset: index, message: "the proxy's host is missing") }
        let host: Host
        if let address = IPAddress(hostText) {
            host = .address(address)
        } else {
            guard hostText.utf8.count <= 253,
                hostText.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") })
            else {
                throw ParseError(offset: index, message: "'\(hostText)' is not a host name or address")
            }
            host = .name(hostText)
        }
        let port = try Self.port(portText, offset: index + hostText.count + 1)
        var url = SOCKSURL(scheme: scheme, host: host, port: port, user: user, password: password)
        url.writtenAsPlainSOCKS = plain
        return url
    }

    private static func port(_ text: Substring?, offset: Int) throws(ParseError) -> UInt16 {
        guard let text else { return defaultPort }
        guard !text.isEmpty, text.allSatisfy(\.isASCII), let port = UInt16(text), port > 0 else {
            throw ParseError(offset: offset, message: "'\(text)' is not a port (1-65535)")
        }
        return port
    }

    /// `%40` → `@`; nil for a broken escape or bytes that are not UTF-8.
    static func percentDecoded(_ text: String) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            else { return nil }
            bytes.append(value)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            let character = Character(Unicode.Scalar(byte))
            if byte < 0x80, character.isLetter || character.isNumber || "-._~".contains(character) {
                out.append(character)
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}
