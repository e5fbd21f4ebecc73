/// An IP address and a port: a socket's address, as SOCKS, the policy and the CLI see it.
public struct IPEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `1.2.3.4:80` or `[::1]:80`. IPv6 needs the brackets, because its colons would
    /// make the port ambiguous.
    public init?(_ text: String) {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text[text.index(after: close)...].hasPrefix(":")
            else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
            guard IPv6Address(String(host)) != nil else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            guard IPv4Address(String(host)) != nil else { return nil }
        }
        guard let address = IPAddress(String(host)),
            !port.isEmpty, port.allSatisfy(\.isASCII), let number = UInt16(port)
        else { return nil }
        self.init(address: address, port: number)
    }

    public var description: String {
        switch address {
        case .v4: "\(address):\(port)"
        case .v6: "[\(address)]:\(port)"
        }
    }
}

/// A host as a URL or a request names it: an address, or a name to resolve.
public enum NetworkHost: Hashable, Sendable, CustomStringConvertible {
    case address(IPAddress)
    case name(String)

    /// As it goes into a URL's authority or a `Host` header: IPv6 in brackets.
    public var description: String {
        switch self {
        case .address(.v6(let address)): "[\(address)]"
        case .address(let address): address.description
        case .name(let name): name
        }
    }
}
