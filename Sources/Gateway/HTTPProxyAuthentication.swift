import AccessPolicy
import Foundation
import HTTPProxyWire
import NIOCore
import NIOHTTP1
import PrintableText

/// Who an HTTP proxy client is, from `Proxy-Authorization` (RFC 9110 §11.7.2) and the
/// listener's methods (`--methods`): `Basic` is checked like RFC 1929 (the password file,
/// on the thread pool) when passwords are taken; `Negotiate` (RFC 4559: SPNEGO, Kerberos)
/// like RFC 1961, with the keytab's HTTP/host keys, when GSS-API is offered. Without
/// credentials a client is anonymous if `none` is offered, else challenged (407). One per
/// client connection: a kept-alive client sends the same header with every request, and
/// it is checked once.
final class HTTPProxyAuthentication {
    /// An authenticated client, as the policy sees it.
    struct Identity {
        var user: String
        var method: RequestFacts.AuthMethod
        var gssapi: RequestFacts.GSSAPISecurity?
        var passwordSource: RequestFacts.PasswordSource?
    }

    enum Outcome {
        case anonymous
        case authenticated(Identity)
        /// 407, with the challenges to send.
        case challenge([String])
        /// The header cannot be read (400).
        case unreadable(ProxyStatus)
    }

    private let gateway: GatewayContext
    /// The header value last verified on this connection, and who it named.
    private var verified: (header: String, identity: Identity)?

    init(gateway: GatewayContext) {
        self.gateway = gateway
    }

    private var takesPasswords: Bool { gateway.offeredMethods.contains(.usernamePassword) && gateway.credentials != nil }

    private var negotiateAcceptor: GSSAcceptor? { gateway.offeredMethods.contains(.gssapi) ? gateway.httpGSSAcceptor : nil }

    private var challenges: [String] {
        (negotiateAcceptor == nil ? [] : ["Negotiate"]) + (takesPasswords ? [#"Basic realm="identgate", charset="UTF-8""#] : [])
    }

    /// `report` runs on `context`'s event loop, at once or after the check.
    func check(_ head: HTTPRequestHead, context: ChannelHandlerContext, report: @escaping (Outcome) -> Void) {
        guard let header = head.headers["Proxy-Authorization"].first else {
            return report(gateway.offeredMethods.contains(.noAuthentication) ? .anonymous : .challenge(challenges))
        }
        if let verified, verified.header == header { return report(.authenticated(verified.identity)) }
        let scheme = header.prefix { $0 != " " }.lowercased()
        if scheme == "negotiate", let acceptor = negotiateAcceptor {
            return negotiate(header, acceptor: acceptor, context: context, report: report)
        }
        let credentials: BasicCredentials?
        do {
            credentials = try BasicCredentials.parse(header)
        } catch {
            return report(.unreadable(error.status))
        }
        guard takesPasswords, let credentials else {
            // A scheme this listener does not take: as if none was sent.
            return report(gateway.offeredMethods.contains(.noAuthentication) ? .anonymous : .challenge(challenges))
        }
        gateway.checkPassword(user: credentials.user, password: credentials.password, context: context) { check in
            guard case .accepted(let source) = check else { return report(.challenge(self.challenges)) }
            self.accept(Identity(user: credentials.user, method: .password, passwordSource: source), header: header, report: report)
        }
    }

    /// One SPNEGO token, accepted on the thread pool (the replay cache is a file). A
    /// Kerberos client completes the context in this one step; a mechanism that needs
    /// more round trips is not served (the proxy's 407 closes the connection).
    private func negotiate(
        _ header: String, acceptor: GSSAcceptor, context: ChannelHandlerContext, report: @escaping (Outcome) -> Void
    ) {
        let encoded = header.drop { $0 != " " }.trimmingCharacters(in: .whitespaces)
        guard encoded.count <= 64 * 1024, let token = Data(base64Encoded: encoded), !token.isEmpty else {
            return report(.unreadable(.badRequest))
        }
        let security = GSSSecurityContext(acceptor: acceptor)
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            let step = try security.accept([UInt8](token))
            return step.complete ? security.peer() : nil
        }.assumeIsolated().whenComplete { result in
            guard case .success(let peer?) = result else {
                let reason = (try? result.get()) == nil ? "a context that needs more than one step" : "\(result)"
                self.gateway.logger.notice(
                    "HTTP Negotiate authentication failed",
                    metadata: ["client": "\(context.remoteAddressText)", "error": "\(DisplayText.escaped(reason))"])
                return report(.challenge(self.challenges))
            }
            let identity = Identity(
                user: peer.principal, method: .gssapi,
                gssapi: RequestFacts.GSSAPISecurity(mechanism: peer.mechanism, protection: .none))
            self.accept(identity, header: header, report: report)
        }
    }

    private func accept(_ identity: Identity, header: String, report: (Outcome) -> Void) {
        verified = (header, identity)
        report(.authenticated(identity))
    }
}
