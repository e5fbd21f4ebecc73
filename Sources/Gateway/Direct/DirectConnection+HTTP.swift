import AccessPolicy
import AuditLog
import HTTPHead
import HTTPProxyWire
import NIOCore
import NIOHTTP1
import NetAddress
import PosixEndpoint

/// An HTTP proxy client on a direct loop. The common case, `CONNECT host:port` with no
/// `Proxy-Authorization` on a listener that takes anonymous clients, is carried here
/// exactly as a SOCKS CONNECT is (`begin`), its head read by NIOHTTP1's decoder
/// (`HTTPHeadReader`) and its answers those of SwiftNIO's front door (`FrontDoor.http`).
/// Everything else goes to SwiftNIO's HTTP front door with every byte read so far, before
/// anything was answered: a head in pieces, a malformed or oversized one (which that door
/// answers: 400, 431), another method, credentials.
extension DirectConnection {
    /// A head read this many times without its end goes to SwiftNIO, which reads it
    /// incrementally (each read here starts from the first byte).
    static let httpHeadReadLimit = 4

    /// `buffer` holds everything the client has sent so far.
    func readHTTPHead(_ buffer: ByteBuffer) {
        httpHeadReads += 1
        let whole: Snapshot = (negotiation, buffer, true)
        switch loop.httpHeads.read(buffer) {
        case .incomplete:
            // The request is not complete by now, so it never will be.
            if clientEOF { return closeQuietly() }
            // A head past the bytes a read takes (`EarlyClientData.limit`) goes on in
            // SwiftNIO, which reads the rest and answers 431 beyond its bound: the bytes
            // left in the socket would bring no new edge here.
            if httpHeadReads >= Self.httpHeadReadLimit || clientMayHoldMore { return handOver(whole) }
        case .unreadable, .other:
            handOver(whole)
        case .connect(let head, let rest):
            guard let local = listener ?? IPEndpoint.local(of: client) else { return closeQuietly() }
            guard let facts = anonymousConnect(head, local: local) else { return handOver(whole) }
            received = rest
            let request = HTTPRequestLine(method: "CONNECT", target: nil)
            begin(facts, frontDoor: .http(minorVersion: head.version.minor), httpRequest: request, before: whole)
        }
    }

    /// The facts of `head` when it is a CONNECT this loop can carry (no credentials,
    /// within the header count SwiftNIO's front door allows); else nil.
    private func anonymousConnect(_ head: HTTPRequestHead, local: IPEndpoint) -> RequestFacts? {
        guard head.headers.count <= HTTPFrontHandler.maximumHeaderCount,
            !head.headers.contains(name: "Proxy-Authorization"), gateway.offeredMethods.contains(.noAuthentication),
            case .tunnel(let host, let port)? = try? ProxyRequestTarget.parse(method: "CONNECT", target: head.uri)
        else { return nil }
        return HTTPFrontHandler.facts(host: host, port: port, identity: nil, peer: peer, local: local, proxied: nil)
    }
}
