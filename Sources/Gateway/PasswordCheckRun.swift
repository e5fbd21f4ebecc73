import AccessPolicy
import NIOCore
import PrintableText
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

extension GatewayContext {
    /// Checks a user's password on the thread pool (a hash, or a PAM stack, may be slow or
    /// block) and reports on `context`'s event loop; a refusal is logged once per episode,
    /// a check that could not be made each time (an operator must see it).
    func checkPassword(
        user: String, password: [UInt8], context: ChannelHandlerContext, report: @escaping (PasswordCheck) -> Void
    ) {
        let verifier = credentials
        threadPool.runIfActive(eventLoop: context.eventLoop) {
            verifier?.check(user: user, password: password) ?? .refused(nil)
        }.assumeIsolated().whenComplete { result in
            let check = (try? result.get()) ?? .unavailable("the check did not run")
            switch check {
            case .accepted:
                break
            case .refused(let why):
                self.repeated.occurred(
                    .passwordFailure, on: context.eventLoop,
                    metadata: [
                        "user": "\(DisplayText.escaped(user))", "client": "\(context.remoteAddressText)",
                        "detail": "\(DisplayText.escaped(why ?? "wrong password or unknown user"))",
                    ])
                self.noteUnprivilegedPAM(user: user)
            case .unavailable(let why):
                self.logger.error(
                    "the password could not be checked",
                    metadata: ["user": "\(DisplayText.escaped(user))", "detail": "\(DisplayText.escaped(why))"])
                self.noteUnprivilegedPAM(user: user)
            }
            report(check)
        }
    }

    /// Once: PAM refusing as an unprivileged user may be the stack, not the password.
    private func noteUnprivilegedPAM(user: String) {
        guard geteuid() != 0, credentials is PAMVerifier || credentials is ChainedVerifier,
            !Self.unprivilegedPAMNoted.exchange(true, ordering: .relaxed)
        else { return }
        let hint =
            "PAM refused or could not check a password as uid \(geteuid()) (after the privilege drop): a stack with "
            + "pam_unix cannot read /etc/shadow for other users then; pam_sss, pam_ldap (nslcd) and pam_krb5 work "
            + "unprivileged (docs/identities.md, \"PAM\")"
        logger.notice("\(hint)", metadata: ["user": "\(DisplayText.escaped(user))"])
    }

    private static let unprivilegedPAMNoted = Atomic<Bool>(false)
}
