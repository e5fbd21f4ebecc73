import NIOCore

/// An RFC 1961 message: `VER=1 MTYP LEN(2) TOKEN`, or the abort `VER=1 MTYP=0xFF` alone.
public struct GSSAPIMessage: Hashable, Sendable {
    public enum Kind: UInt8, Hashable, Sendable {
        /// Context establishment (§3), repeated until the context is complete.
        case context = 1
        /// Protection-level subnegotiation (§4).
        case protection = 2
        /// A message under per-message protection (§5).
        case encapsulated = 3
        /// The peer gives up (§3); no length, no token.
        case abort = 0xFF
    }

    public var kind: Kind
    public var token: [UInt8]

    public init(_ kind: Kind, token: [UInt8] = []) {
        self.kind = kind
        self.token = token
    }

    /// The length field is two octets.
    public static let largestToken = 65_535
}

/// RFC 1961 §4's protection levels, and the extension "none" (0): curl's and Dante's
/// "clear", not in the RFC: the context authenticates, nothing after it is wrapped.
public enum GSSAPIProtection: UInt8, Hashable, Sendable, Comparable, CaseIterable {
    case none = 0
    case integrity = 1
    case confidentiality = 2

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// A client's request, as a level: 3 ("selective", per message) is given
    /// confidentiality, the stronger of its two; anything else is not a level.
    public init?(requested octet: UInt8) {
        if octet == 3 { self = .confidentiality } else if let level = Self(rawValue: octet) { self = level } else { return nil }
    }

    public var name: String {
        switch self {
        case .none: "none"
        case .integrity: "integrity"
        case .confidentiality: "confidentiality"
        }
    }
}

extension ByteBuffer {
    /// nil while incomplete (the reader index is left where it was). Throws on a wrong
    /// version or type, or a token over `maxTokenLength` (before it arrives).
    public mutating func readGSSAPIMessage(maxTokenLength: Int = GSSAPIMessage.largestToken) throws -> GSSAPIMessage? {
        let start = readerIndex
        guard let (version, type) = getMultipleIntegers(at: start, as: (UInt8, UInt8).self) else { return nil }
        guard version == 1 else { throw SOCKSWireError.gssapiFraming("version \(version), not 1") }
        guard let kind = GSSAPIMessage.Kind(rawValue: type) else {
            throw SOCKSWireError.gssapiFraming("unknown message type \(type)")
        }
        if kind == .abort {
            moveReaderIndex(forwardBy: 2)
            return GSSAPIMessage(.abort)
        }
        guard let length = getInteger(at: start + 2, as: UInt16.self) else { return nil }
        guard Int(length) <= maxTokenLength else {
            throw SOCKSWireError.gssapiFraming("a token of \(length) bytes, over the limit of \(maxTokenLength)")
        }
        guard readableBytes >= 4 + Int(length) else { return nil }
        moveReaderIndex(forwardBy: 4)
        return GSSAPIMessage(kind, token: readBytes(length: Int(length)) ?? [])
    }

    @discardableResult
    public mutating func writeGSSAPIMessage(_ message: GSSAPIMessage) -> Int {
        if message.kind == .abort { return writeMultipleIntegers(UInt8(1), UInt8(0xFF)) }
        return writeMultipleIntegers(UInt8(1), message.kind.rawValue, UInt16(truncatingIfNeeded: message.token.count))
            + writeBytes(message.token)
    }
}
