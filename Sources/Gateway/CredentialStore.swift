import AccessPolicy
import CCrypt

#if canImport(Glibc)
    import Glibc
#endif

/// Checks an RFC 1929 (or HTTP Basic) username and password; called on the thread pool,
/// so it may be slow. `CredentialStore` (the password file), `PAMVerifier` and the two
/// chained are the gateway's; tests give others.
public protocol PasswordVerifier: Sendable {
    func check(user: String, password: [UInt8]) -> PasswordCheck
}

/// What a password check concluded.
public enum PasswordCheck: Sendable, Equatable {
    /// Right, and this is what checked it (the decision record says so).
    case accepted(RequestFacts.PasswordSource)
    /// Wrong password, unknown user, or an account that may not be used now.
    case refused(String?)
    /// Could not be checked (PAM's module could not reach its data): refused too, but
    /// worth an operator's attention.
    case unavailable(String)

    public var accepted: Bool {
        if case .accepted = self { true } else { false }
    }
}

/// The users allowed to authenticate with RFC 1929 username/password, and their salted
/// password hashes in crypt(3) form, the same as /etc/shadow: yescrypt (`$y$…`) or
/// SHA-512 (`$6$…`). The file has one `user:hash` line per user; `#` starts a comment;
/// fields after a second colon are ignored, so shadow lines can be pasted as they are.
public struct CredentialStore: PasswordVerifier {
    public struct LoadError: Error, CustomStringConvertible {
        public var description: String
    }

    private let hashes: [String: String]
    /// Checked when the user is unknown, so that a wrong user name costs as much time as
    /// a wrong password and the answer time does not tell which users exist.
    private let decoyHash: String

    public var userCount: Int { hashes.count }

    public init(contents: String, fileName: String = "<passwords>") throws {
        var hashes: [String: String] = [:]
        var problems: [String] = []
        for (index, rawLine) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            let location = "\(fileName):\(index + 1)"
            guard fields.count >= 2, !fields[0].isEmpty else {
                problems.append("\(location): error: expected 'user:hash'")
                continue
            }
            let user = String(fields[0])
            let hash = String(fields[1])
            guard hash.hasPrefix("$") || hash.hasPrefix("!") || hash.hasPrefix("*") else {
                problems.append(
                    "\(location): error: the hash for '\(user)' is not a crypt(3) hash; make one with 'identgate passwd \(user)'")
                continue
            }
            if hashes[user] != nil {
                problems.append("\(location): error: '\(user)' is listed twice")
                continue
            }
            // `!` and `*` mark a locked account, as in /etc/shadow: it never authenticates.
            hashes[user] = hash
        }
        guard problems.isEmpty else { throw LoadError(description: problems.joined(separator: "\n")) }
        self.hashes = hashes
        self.decoyHash =
            hashes.values.first(where: { $0.hasPrefix("$") })
            ?? (try? PasswordHasher.hash(password: Array("decoy".utf8), method: .sha512)) ?? "*"
    }

    public func check(user: String, password: [UInt8]) -> PasswordCheck {
        verify(user: user, password: password) ? .accepted(.file) : .refused(nil)
    }

    /// Whether the file lists `user` (a chained PAM check is then not asked).
    public func lists(_ user: String) -> Bool {
        hashes[user] != nil
    }

    /// Deliberately slow (that is what the hash is for): call it off the event loop.
    public func verify(user: String, password: [UInt8]) -> Bool {
        guard let hash = hashes[user], hash.hasPrefix("$") else {
            _ = PasswordHasher.verify(password: password, hash: decoyHash)
            return false
        }
        return PasswordHasher.verify(password: password, hash: hash)
    }
}

/// crypt(3) through libxcrypt, thread-safe with `crypt_r`.
public enum PasswordHasher {
    public enum Method: String, CaseIterable, Sendable {
        case yescrypt, sha512

        var prefix: String {
            switch self {
            case .yescrypt: "$y$"
            case .sha512: "$6$"
            }
        }
    }

    public struct HashError: Error, CustomStringConvertible {
        public var description: String
    }

    /// A new salted hash; the salt comes from the kernel's random source.
    public static func hash(password: [UInt8], method: Method) throws -> String {
        var setting = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn(method.prefix, 0, nil, 0, &setting, Int32(setting.count)) != nil else {
            throw HashError(description: "cannot make a \(method.rawValue) salt: \(String(cString: strerror(errno)))")
        }
        guard let hash = crypt(password: password, setting: setting), hash.hasPrefix("$") else {
            throw HashError(description: "crypt(3) refused the \(method.rawValue) setting")
        }
        return hash
    }

    public static func verify(password: [UInt8], hash: String) -> Bool {
        guard let computed = crypt(password: password, setting: Array(hash.utf8CString)) else { return false }
        // Compare every octet, so the time does not say where the first difference is.
        let lhs = Array(computed.utf8)
        let rhs = Array(hash.utf8)
        guard lhs.count == rhs.count else { return false }
        return zip(lhs, rhs).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private static func crypt(password: [UInt8], setting: [CChar]) -> String? {
        // A password with a NUL cannot be passed to crypt(3); it can never match.
        guard !password.contains(0) else { return nil }
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        let phrase = password.map { CChar(bitPattern: $0) } + [0]
        guard let result = crypt_r(phrase, setting, data) else { return nil }
        let text = String(cString: result)
        // libxcrypt returns a string starting with '*' on failure.
        return text.hasPrefix("*") ? nil : text
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var text = self
        while let first = text.first, first == " " || first == "\t" || first == "\r" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text.removeLast() }
        return text
    }
}
