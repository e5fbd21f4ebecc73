import Foundation

/// `Proxy-Authorization: Basic …` (RFC 7617): a user and a password, base64 of
/// `user:password` in UTF-8. Checked against the same store as RFC 1929's, under the
/// same bounds (at most 255 bytes each).
public struct BasicCredentials: Hashable, Sendable {
    public var user: String
    public var password: [UInt8]

    public static let maximumLength = 255

    public init(user: String, password: [UInt8]) {
        self.user = user
        self.password = password
    }

    /// The credentials in a header value; nil if it is not the Basic scheme. Throws when
    /// it is Basic but unreadable (the client gets 400, not another challenge).
    public static func parse(_ value: String) throws(ProxyRequestError) -> BasicCredentials? {
        let trimmed = value.drop { $0 == " " || $0 == "\t" }
        guard let space = trimmed.firstIndex(where: { $0 == " " || $0 == "\t" }),
            trimmed[..<space].lowercased() == "basic"
        else { return nil }
        let token = trimmed[space...].drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        guard token.count <= 4 * 200, let data = Data(base64Encoded: String(token)),
            case let decoded = [UInt8](data), let colon = decoded.firstIndex(of: UInt8(ascii: ":"))
        else {
            throw ProxyRequestError(.badRequest, "the Basic credentials are not base64 of user:password")
        }
        let userBytes = decoded[..<colon]
        let password = Array(decoded[(colon + 1)...])
        guard let user = String(validating: userBytes, as: UTF8.self), !user.isEmpty,
            userBytes.count <= maximumLength, password.count <= maximumLength,
            !user.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else {
            throw ProxyRequestError(.badRequest, "the Basic user is empty, too long or not text")
        }
        return BasicCredentials(user: user, password: password)
    }
}
