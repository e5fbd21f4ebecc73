import HTTPProxyWire
import NIOCore
import NIOHTTP1
import PrintableText

/// Who an HTTP proxy client is, from `Proxy-Authorization` (RFC 9110 §11.7.2) and the
/// listener's methods (`--methods`): Basic is checked like RFC 1929 (the password file, on
/// the thread pool) when passwords are taken; without credentials a client is anonymous
/// if `none` is offered, else challenged (407). One per client connection: a kept-alive
/// client sends the same header with every request, and it is checked once.
final class HTTPProxyAuthentication {
    enum Outcome {
        case anonymous
        case user(String)
        /// 407, with the challenges to send.
        case challenge([String])
        /// The header cannot be read (400).
        case unreadable(ProxyStatus)
    }

    private let gateway: GatewayContext
    /// The header value last verified on this connection, and its user.
    private var verified: (header: String, user: String)?

    init(gateway: GatewayContext) {
        self.gateway = gateway
    }

    private var takesPasswords: Bool { gateway.offeredMethods.contains(.usernamePassword) && gateway.credentials != nil }

    private var challenges: [String] { takesPasswords ? [#"Basic realm="identgate", charset="UTF-8""#] : [] }

    /// `report` runs on `context`'s event loop, at once or after the password check.
    func check(_ head: HTTPRequestHead, context: ChannelHandlerContext, report: @escaping (Outcome) -> Void) {
        let header = head.headers["Proxy-Authorization"].first
        let credentials: BasicCredentials?
        do {
            credentials = try header.flatMap { value throws(ProxyRequestError) in try BasicCredentials.parse(value) }
        } catch {
            return report(.unreadable(error.status))
        }
        guard takesPasswords, let header, let credentials else {
            return report(gateway.offeredMethods.contains(.noAuthentication) ? .anonymous : .challenge(challenges))
        }
        if let verified, verified.header == header { return report(.user(verified.user)) }
        let store = gateway.credentials
        gateway.threadPool.runIfActive(eventLoop: context.eventLoop) {
            store?.verify(user: credentials.user, password: credentials.password) ?? false
        }.assumeIsolated().whenComplete { result in
            guard (try? result.get()) == true else {
                self.gateway.repeated.occurred(
                    .passwordFailure, on: context.eventLoop,
                    metadata: ["user": "\(DisplayText.escaped(credentials.user))", "client": "\(context.remoteAddressText)"])
                return report(.challenge(self.challenges))
            }
            self.verified = (header, credentials.user)
            report(.user(credentials.user))
        }
    }
}
