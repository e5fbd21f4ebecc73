import NIOCore
import NetAddress
import Testing

@testable import SOCKSWire
import ProxyURL

/// The client side, against the server side: every exchange the probe makes.
@Suite struct ClientStateMachineTests {
    func url(_ text: String) -> SOCKSURL {
        (try? SOCKSURL.parse(text)) ?? SOCKSURL(scheme: .socks5, host: .name("invalid"))
    }

    @Test func socks5WithAPasswordAgainstOurServer() {
        var client = SOCKSClientStateMachine(
            url: url("socks5h://alice:secret@gw"), command: .connect, destination: .domain("www.example.com"), port: 443)
        var server = SOCKSServerStateMachine(offeredMethods: [.usernamePassword])
        var toServer = ByteBuffer(bytes: client.start())
        var toClient = ByteBuffer()
        guard case .send(let selection) = server.receive(&toServer) else {
            Issue.record("no method selection")
            return
        }
        toClient.writeSOCKSServerMessage(selection)
        guard case .methodChosen(.usernamePassword, let credentials) = client.receive(&toClient) else {
            Issue.record("no method")
            return
        }
        toServer.writeBytes(credentials)
        guard case .checkCredentials(let request) = server.receive(&toServer) else {
            Issue.record("no credentials")
            return
        }
        #expect(request.username == "alice" && request.password == Array("secret".utf8))
        guard case .send(let accepted) = server.credentialsChecked(valid: true) else {
            Issue.record("no answer")
            return
        }
        toClient.writeSOCKSServerMessage(accepted)
        guard case .authenticated(true, let connect) = client.receive(&toClient) else {
            Issue.record("not accepted")
            return
        }
        toServer.writeBytes(connect)
        guard case .handleRequest(let socksRequest) = server.receive(&toServer) else {
            Issue.record("no request")
            return
        }
        #expect(socksRequest.host == .domain("www.example.com") && socksRequest.port == 443)
        toClient.writeSOCKSServerMessage(.failed(.notAllowed, version: .socks5))
        guard case .reply(let reply, final: true) = client.receive(&toClient) else {
            Issue.record("no reply")
            return
        }
        #expect(!reply.granted && reply.meaning == "0x02 connection not allowed by ruleset")
    }

    @Test func socks4aNamesTheHostAndBindWaitsForTheSecondReply() {
        var client = SOCKSClientStateMachine(
            url: url("socks4a://bob@gw"), command: .bind, destination: .domain("ftp.example"), port: 21)
        var server = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        var toServer = ByteBuffer(bytes: client.start())
        guard case .handleRequest(let request) = server.receive(&toServer) else {
            Issue.record("no request")
            return
        }
        #expect(request.version == .socks4a && request.command == .bind && request.claimedUser == "bob")
        var toClient = ByteBuffer()
        toClient.writeSOCKSServerMessage(.granted(version: .socks4a, boundAddress: IPEndpoint("10.0.0.1:2000")!))
        guard case .reply(let first, final: false) = client.receive(&toClient) else {
            Issue.record("first")
            return
        }
        #expect(first.granted && first.port == 2000)
        #expect(client.receive(&toClient) == .waitForMoreBytes)
        toClient.writeSOCKSServerMessage(.failed(.identMismatch, version: .socks4a))
        guard case .reply(let second, final: true) = client.receive(&toClient) else {
            Issue.record("second")
            return
        }
        #expect(second.meaning == "93 user-ids differ")
    }

    @Test func repliesArriveInPiecesAndNonsenseIsNamed() {
        var client = SOCKSClientStateMachine(url: url("socks5://gw"), command: .connect, destination: .ipv4(.any), port: 1)
        var bytes = ByteBuffer(bytes: [5])
        #expect(client.receive(&bytes) == .waitForMoreBytes)
        bytes.writeBytes([0])
        guard case .methodChosen(.noAuthentication, _) = client.receive(&bytes) else {
            Issue.record("method")
            return
        }
        bytes.writeBytes([5, 0, 0, 4] + [UInt8](repeating: 0, count: 10))
        #expect(client.receive(&bytes) == .waitForMoreBytes, "an IPv6 reply needs 22 bytes")
        bytes.writeBytes([UInt8](repeating: 0, count: 8))
        guard case .reply(let reply, final: true) = client.receive(&bytes) else {
            Issue.record("reply")
            return
        }
        #expect(reply.granted && reply.host == .ipv6(IPv6Address(high: 0, low: 0)))
        var other = SOCKSClientStateMachine(url: url("socks5://gw"), command: .connect, destination: .ipv4(.any), port: 1)
        var wrong = ByteBuffer(bytes: [4, 0])
        guard case .protocolError = other.receive(&wrong) else {
            Issue.record("no error")
            return
        }
    }
}
