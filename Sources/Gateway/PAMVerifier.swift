import AccessPolicy
import CPAM

/// RFC 1929 (and HTTP Basic) passwords checked by PAM (`--pam-service NAME`):
/// pam_authenticate, then pam_acct_mgmt (an expired or locked account is refused), with a
/// conversation that answers only the password prompt. Runs on the thread pool; a stack
/// that hangs holds that thread, while the session itself ends at the negotiation deadline
/// (docs/identities.md, "PAM").
public struct PAMVerifier: PasswordVerifier {
    public let service: String

    public init(service: String) {
        self.service = service
    }

    public func check(user: String, password: [UInt8]) -> PasswordCheck {
        var detail = [CChar](repeating: 0, count: 256)
        let result = password.withUnsafeBufferPointer { bytes in
            detail.withUnsafeMutableBufferPointer { text in
                bytes.withMemoryRebound(to: CChar.self) { characters in
                    identgate_pam_check(service, user, characters.baseAddress, characters.count, text.baseAddress, text.count)
                }
            }
        }
        let said = String(decoding: detail.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch result {
        case IDENTGATE_PAM_ACCEPTED: return .accepted(.pam)
        case IDENTGATE_PAM_REFUSED: return .refused(said)
        case IDENTGATE_PAM_ACCOUNT_REFUSED: return .refused("account: \(said)")
        default: return .unavailable(said)
        }
    }
}

/// `--password-file` and `--pam-service` together: a user the file lists is checked by the
/// file alone (the file wins: a local override); every other user by PAM.
public struct ChainedVerifier: PasswordVerifier {
    public let file: CredentialStore
    public let pam: PAMVerifier

    public init(file: CredentialStore, pam: PAMVerifier) {
        self.file = file
        self.pam = pam
    }

    public func check(user: String, password: [UInt8]) -> PasswordCheck {
        file.lists(user) ? file.check(user: user, password: password) : pam.check(user: user, password: password)
    }
}
