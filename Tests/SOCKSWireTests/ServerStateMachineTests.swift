import NIOCore
import NetAddress
import Testing

@testable import SOCKSWire

func encoded(_ message: SOCKSServerMessage) -> [UInt8] {
    var output = ByteBuffer()
    output.writeSOCKSServerMessage(message)
    return Array(output.readableBytesView)
}

/// What the state machine would put on the wire for an action, and whether it closes.
func wire(_ action: SOCKSServerStateMachine.Action) -> (bytes: [UInt8], closes: Bool)? {
    switch action {
    case .send(let message): (encoded(message), false)
    case .sendAndClose(let message): (encoded(message), true)
    case .close: ([], true)
    case .waitForMoreBytes, .checkCredentials, .acceptGSSToken, .chooseGSSProtection, .handleRequest: nil
    }
}

@Suite struct ServerStateMachineTests {
    var machine = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])

    @Test mutating func socks4ConnectGrantedWithBoundAddress() {
        var input = buffer([4, 1] + be(80) + [10, 1, 2, 3] + Array("bob".utf8) + [0])
        #expect(
            machine.receive(&input)
                == .handleRequest(
                    SOCKSRequest(
                        version: .socks4, command: .connect, host: .ipv4(IPv4Address(10, 1, 2, 3)), port: 80, claimedUser: "bob")
                ))
        #expect(machine.isNegotiationComplete)
        let reply = SOCKSServerMessage.granted(version: .socks4, boundAddress: IPEndpoint("192.0.2.1:4000")!)
        #expect(encoded(reply) == [0, 90] + be(4000) + [192, 0, 2, 1])
    }

    @Test mutating func socks4aIsReportedAsSuch() {
        var input = buffer([4, 1] + be(80) + [0, 0, 0, 1, 0] + Array("h.example".utf8) + [0])
        guard case .handleRequest(let request) = machine.receive(&input) else {
            Issue.record("no request")
            return
        }
        #expect(request.version == .socks4a)
        #expect(request.claimedUser == nil)
        #expect(request.host == .domain("h.example"))
    }

    @Test mutating func socks4CannotCarryIPv6BoundAddress() {
        var input = buffer([4, 1] + be(80) + [10, 1, 2, 3, 0])
        _ = machine.receive(&input)
        #expect(encoded(SOCKSServerMessage.granted(version: .socks4, boundAddress: IPEndpoint("[::1]:9")!)) == [0, 90, 0, 9, 0, 0, 0, 0])
    }

    @Test mutating func socks5GreetingAndRequestInOneSegment() {
        var input = buffer([5, 1, 0] + [5, 1, 0, 1, 127, 0, 0, 1] + be(22))
        #expect(machine.receive(&input) == .send(.methodSelection(.noAuthentication)))
        #expect(
            machine.receive(&input)
                == .handleRequest(
                    SOCKSRequest(
                        version: .socks5, command: .connect, host: .ipv4(IPv4Address(127, 0, 0, 1)), port: 22,
                        authMethod: .noAuthentication)
                ))
        #expect(
            encoded(SOCKSServerMessage.granted(version: .socks5, boundAddress: IPEndpoint("127.0.0.1:5000")!)) == [5, 0, 0, 1, 127, 0, 0, 1] + be(5000))
    }

    @Test func bytesArrivingOneAtATime() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        let bytes: [UInt8] = [5, 1, 0] + [5, 1, 0, 3, 1, UInt8(ascii: "h")] + be(80)
        var input = ByteBuffer()
        var actions: [SOCKSServerStateMachine.Action] = []
        for byte in bytes {
            input.writeInteger(byte)
            var action = machine.receive(&input)
            while action != .waitForMoreBytes {
                actions.append(action)
                if case .handleRequest = action { break }
                action = machine.receive(&input)
            }
        }
        #expect(
            actions == [
                .send(.methodSelection(.noAuthentication)),
                .handleRequest(
                    SOCKSRequest(version: .socks5, command: .connect, host: .domain("h"), port: 80, authMethod: .noAuthentication)
                ),
            ])
    }

    @Test func passwordFlow() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.usernamePassword])
        var input = buffer([5, 2, 0, 2])
        #expect(machine.receive(&input) == .send(.methodSelection(.usernamePassword)))
        input = buffer([1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "p")])
        #expect(
            machine.receive(&input) == .checkCredentials(UsernamePasswordRequest(username: "u", password: [UInt8(ascii: "p")])))
        #expect(wire(machine.credentialsChecked(valid: true))! == ([1, 0], false))
        input = buffer([5, 1, 0, 1, 1, 1, 1, 1, 0, 80])
        guard case .handleRequest(let request) = machine.receive(&input) else {
            Issue.record("no request")
            return
        }
        #expect(request.claimedUser == "u")
        #expect(request.authMethod == .usernamePassword)
    }

    @Test func wrongPasswordRepliesFailureAndCloses() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.usernamePassword])
        var input = buffer([5, 1, 2, 1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "x")])
        _ = machine.receive(&input)
        _ = machine.receive(&input)
        #expect(wire(machine.credentialsChecked(valid: false))! == ([1, 1], true))
    }

    @Test func serverPreferenceChoosesAmongClientMethods() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.usernamePassword, .noAuthentication])
        var input = buffer([5, 2, 0, 2])
        #expect(machine.receive(&input) == .send(.methodSelection(.usernamePassword)))
        var other = SOCKSServerStateMachine(offeredMethods: [.usernamePassword, .noAuthentication])
        input = buffer([5, 1, 0])
        #expect(other.receive(&input) == .send(.methodSelection(.noAuthentication)))
    }

    /// Every bad input from the issue, with the exact bytes answered before the close.
    @Test(
        arguments: [
            ("unknown version byte", [.noAuthentication], [7, 1, 0] as [UInt8], [] as [UInt8]),
            ("socks4 unknown command", [.noAuthentication], [4, 9, 0, 80, 1, 2, 3, 4, 0], [0, 91, 0, 0, 0, 0, 0, 0]),
            (
                "userid over the cap", [.noAuthentication], [4, 1, 0, 80, 1, 2, 3, 4] + [UInt8](repeating: 65, count: 300),
                [0, 91, 0, 0, 0, 0, 0, 0]
            ),
            (
                "4a host over the cap", [.noAuthentication], [4, 1, 0, 80, 0, 0, 0, 1, 0] + [UInt8](repeating: 65, count: 300),
                [0, 91, 0, 0, 0, 0, 0, 0]
            ),
            ("zero methods", [.noAuthentication], [5, 0], [5, 0xff]),
            ("no acceptable method", [.noAuthentication], [5, 1, 2], [5, 0xff]),
            ("rfc1929 wrong version", [.usernamePassword], [5, 1, 2, 5, 1, 65, 1, 65], [5, 2, 1, 1]),
            ("unknown atyp", [.noAuthentication], [5, 1, 0, 5, 1, 0, 8], [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]),
            ("unknown command", [.noAuthentication], [5, 1, 0, 5, 7, 0, 1], [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]),
            ("rsv not zero", [.noAuthentication], [5, 1, 0, 5, 1, 1, 1], [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
            ("request version not 5", [.noAuthentication], [5, 1, 0, 4, 1, 0, 1], [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
        ] as [(String, [SOCKS5AuthMethod], [UInt8], [UInt8])])
    func badInput(name: String, methods: [SOCKS5AuthMethod], input: [UInt8], expected: [UInt8]) {
        var machine = SOCKSServerStateMachine(offeredMethods: methods)
        var bytes = buffer(input)
        var sent: [UInt8] = []
        var closed = false
        while !closed {
            guard let (reply, closes) = wire(machine.receive(&bytes)) else {
                Issue.record("\(name): no reply")
                return
            }
            sent += reply
            closed = closes
        }
        #expect(sent == expected, "\(name)")
    }

    @Test func negotiationTimeoutReplies() {
        var socks4 = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        var input = buffer([4, 1, 0])
        #expect(socks4.receive(&input) == .waitForMoreBytes)
        #expect(socks4.negotiationTimedOut().map(encoded) == [0, 91, 0, 0, 0, 0, 0, 0])

        var socks5 = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        input = buffer([5, 1])
        #expect(socks5.receive(&input) == .waitForMoreBytes)
        #expect(socks5.negotiationTimedOut() == nil, "a half greeting has no reply")

        var socks5Request = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        input = buffer([5, 1, 0, 5, 1])
        _ = socks5Request.receive(&input)
        #expect(socks5Request.receive(&input) == .waitForMoreBytes)
        #expect(socks5Request.negotiationTimedOut().map(encoded) == [5, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    @Test(arguments: [
        (SOCKSRequestFailure.notAllowed, UInt8(91), UInt8(2)),
        (.identUnreachable, 92, 2),
        (.identMismatch, 93, 2),
        (.generalFailure, 91, 1),
        (.networkUnreachable, 91, 3),
        (.hostUnreachable, 91, 4),
        (.connectionRefused, 91, 5),
        (.timedOut, 91, 6),
        (.commandNotSupported, 91, 7),
        (.addressTypeNotSupported, 91, 8),
    ])
    func failureCodes(failure: SOCKSRequestFailure, socks4: UInt8, socks5: UInt8) {
        #expect(failure.socks4Code.rawValue == socks4)
        #expect(failure.socks5Code.rawValue == socks5)
    }

    /// A password check that completes after the negotiation ended (deadline, close)
    /// closes the connection; it used to trap the whole process.
    @Test func lateCredentialResultCloses() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.usernamePassword])
        var input = buffer([5, 1, 2, 1, 1, UInt8(ascii: "u"), 1, UInt8(ascii: "p")])
        #expect(machine.receive(&input) == .send(.methodSelection(.usernamePassword)))
        guard case .checkCredentials = machine.receive(&input) else {
            Issue.record("no credential check")
            return
        }
        #expect(machine.negotiationTimedOut() == nil)
        #expect(machine.credentialsChecked(valid: true) == .close)
        #expect(machine.credentialsChecked(valid: false) == .close)
    }

    /// A result for a check that was never asked for is a close, not a trap.
    @Test func unaskedCredentialResultCloses() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.noAuthentication])
        #expect(machine.credentialsChecked(valid: true) == .close)
        #expect(machine.isNegotiationComplete)
    }
}
