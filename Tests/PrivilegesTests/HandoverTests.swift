import Foundation
import Glibc
import NetAddress
import PosixEndpoint
import Testing

@testable import Privileges

@Suite struct HandoverMessageTests {
    @Test func everyMessageReadsBackAsItself() throws {
        let sockets = HandedSockets(
            pid: 4242, firstSession: 1 << 32, auditLog: "/var/log/identgate/audit log.jsonl",
            listeners: [
                .gateway(index: 0, endpoint: IPEndpoint("127.0.0.1:1080")!), .gateway(index: 0, endpoint: IPEndpoint("127.0.0.1:1080")!),
                .gateway(index: 1, endpoint: IPEndpoint("[::1]:1080")!), .metrics(IPEndpoint("127.0.0.1:9100")!), .upgrade,
            ])
        let messages: [HandoverMessage] = [
            .askArguments, .arguments(["run", "--listen", "127.0.0.1:1080", "a b", ""]), .arguments(["run"]),
            .takeover(pid: 17), .sockets(sockets), .refused(reason: "uid 5 is not\nroot"), .serving, .failed(reason: "policy"),
            .stopped(chain: (String(repeating: "ab", count: 32), 99)), .stopped(chain: nil), .draining(sessions: 3),
            .draining(sessions: nil), .drained,
        ]
        for message in messages {
            let read = try #require(HandoverMessage(message.text), "\(message.text)")
            #expect(read == message)
            #expect(
                !message.text.contains("\n") || message.text.hasPrefix("sockets") || message.text.hasPrefix("arguments"),
                "one line, but for the lists")
        }
        guard case .sockets(let back) = HandoverMessage(HandoverMessage.sockets(sockets).text) else {
            Issue.record("not sockets")
            return
        }
        #expect(back == sockets)
    }

    @Test func anythingElseIsRefused() {
        for text in [
            "", "takeover", "takeover v2 pid=1", "takeover v1 pid=x", "sockets v1 session=1", "sockets v1 pid=1 session=1\nsocks 0 nowhere",
            "sockets v1 pid=1 session=1\nsocks 5000 127.0.0.1:1", "sockets v1 pid=1 session=1\nbogus", "stopped chain=abc:1",
            "stopped", "draining sessions=-1", "draining sessions=", "serving now", "hello",
        ] {
            #expect(HandoverMessage(text) == nil, "\(text)")
        }
    }

    @Test func sessionNumbersOfASuccessorLieBeyondThePredecessors() {
        #expect(HandedSockets.firstSession(after: 1) == 1 << 32)
        #expect(HandedSockets.firstSession(after: (1 << 32) + 5) == 2 << 32)
        // The predecessor can give out 2^32 more before the successor's first.
        for upcoming: UInt64 in [1, 77, (1 << 32) - 1, 1 << 32, (3 << 32) + 12] {
            #expect(HandedSockets.firstSession(after: upcoming) > upcoming)
            #expect(HandedSockets.firstSession(after: upcoming) - upcoming <= 1 << 32)
        }
    }
}

@Suite struct HandoverSocketTests {
    private func path() -> String {
        "/tmp/identgate-handover-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    }

    @Test func listenersCrossWithTheirMessageAndThePeerIsKnown() throws {
        let path = path()
        defer { unlink(path) }
        #expect(try HandoverSocket.connect(to: path) == nil, "no file: nobody to take over from")
        let listener = try HandoverSocket.listen(at: path)
        defer { close(listener) }
        let client = try #require(try HandoverSocket.connect(to: path))
        defer { client.close() }
        let server = try #require(HandoverSocket.accept(on: listener))
        defer { server.close() }
        #expect(server.peer?.pid == getpid())
        #expect(server.peer?.uid == geteuid())

        let listening = try ListeningSocket.open(IPEndpoint("127.0.0.1:0")!)
        defer { close(listening.descriptor) }
        try server.send("sockets", descriptors: [listening.descriptor])
        let (text, descriptors) = try client.receive(timeout: 5)
        #expect(text == "sockets")
        #expect(descriptors.count == 1)
        defer { for descriptor in descriptors { close(descriptor) } }
        // The same socket, another descriptor, closed on exec.
        #expect(descriptors[0] != listening.descriptor)
        #expect(IPEndpoint.local(of: descriptors[0]) == listening.endpoint)
        #expect(fcntl(descriptors[0], F_GETFD) & FD_CLOEXEC != 0)
        #expect(try ActivatedSockets.check(descriptors[0], name: "handed").endpoint == listening.endpoint)
    }

    @Test func aClosedPeerAndASilentOneAreErrorsNotHangs() throws {
        let path = path()
        defer { unlink(path) }
        let listener = try HandoverSocket.listen(at: path)
        defer { close(listener) }
        let client = try #require(try HandoverSocket.connect(to: path))
        let server = try #require(HandoverSocket.accept(on: listener))
        defer { server.close() }
        #expect(throws: HandoverSocket.Failure.self) { try server.receive(timeout: 1) }
        client.close()
        #expect(throws: HandoverSocket.Failure.self) { try server.receive(timeout: 1) }
    }

    @Test func aStaleFileIsReplacedButALiveListenerIsNot() throws {
        let path = path()
        defer { unlink(path) }
        let first = try HandoverSocket.listen(at: path)
        #expect(throws: HandoverSocket.Failure.self) { try HandoverSocket.listen(at: path) }
        close(first)
        let second = try HandoverSocket.listen(at: path)
        close(second)
    }
}
