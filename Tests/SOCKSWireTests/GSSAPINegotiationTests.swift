import NIOCore
import Testing

@testable import SOCKSWire

/// RFC 1961 in the negotiation: context frames until complete, the protection level,
/// then the request; the abort frame on every failure; framing errors.
@Suite struct GSSAPINegotiationTests {
    func frame(_ kind: UInt8, _ token: [UInt8]) -> [UInt8] {
        [1, kind] + be(UInt16(token.count)) + token
    }

    @Test func contextInTwoStepsThenLevelThenRequest() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi, .noAuthentication])
        var input = buffer([5, 2, 0, 1] + frame(1, [0xAA, 0xBB]))
        #expect(wire(machine.receive(&input))! == ([5, 1], false), "GSS-API preferred")
        #expect(machine.receive(&input) == .acceptGSSToken([0xAA, 0xBB]))
        #expect(machine.receive(&input) == .waitForMoreBytes, "nothing is read while the step runs")
        #expect(wire(machine.gssContextStep(reply: [1, 2, 3], principal: nil))! == (frame(1, [1, 2, 3]), false))
        input.writeBytes(frame(1, [0xCC]))
        #expect(machine.receive(&input) == .acceptGSSToken([0xCC]))
        #expect(wire(machine.gssContextStep(reply: [9], principal: "alice@TEST.EXAMPLE"))! == (frame(1, [9]), false))
        input.writeBytes(frame(2, [0x01]))
        #expect(machine.receive(&input) == .chooseGSSProtection([0x01]))
        #expect(wire(machine.gssProtectionChosen(reply: [0x02]))! == (frame(2, [0x02]), false))
        input.writeBytes([5, 1, 0, 1, 10, 0, 0, 1] + be(80))
        guard case .handleRequest(let request) = machine.receive(&input) else {
            Issue.record("no request")
            return
        }
        #expect(request.claimedUser == "alice@TEST.EXAMPLE")
        #expect(request.authMethod == .gssapi)
    }

    @Test func aCompleteContextWithNoTokenSendsNothing() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi])
        var input = buffer([5, 1, 1] + frame(1, [7]))
        _ = machine.receive(&input)
        _ = machine.receive(&input)
        #expect(machine.gssContextStep(reply: [], principal: "bob@TEST.EXAMPLE") == .waitForMoreBytes)
    }

    @Test func failuresAbort() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi])
        var input = buffer([5, 1, 1] + frame(1, [7]))
        _ = machine.receive(&input)
        _ = machine.receive(&input)
        #expect(wire(machine.gssFailed())! == ([1, 0xFF], true))
        // A result that comes too late closes without a word.
        #expect(machine.gssContextStep(reply: [1], principal: nil) == .close)
    }

    @Test(arguments: [
        ([2, 1, 0, 0] as [UInt8], "version"),
        ([1, 7, 0, 0], "type"),
        ([1, 2, 0, 1, 1], "protection before context"),
        ([1, 3, 0, 1, 1], "encapsulated before context"),
    ])
    func framingErrorsAbort(bytes: [UInt8], _: String) {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi])
        var input = buffer([5, 1, 1] + bytes)
        _ = machine.receive(&input)
        #expect(wire(machine.receive(&input))! == ([1, 0xFF], true))
    }

    @Test func aClientAbortCloses() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi])
        var input = buffer([5, 1, 1, 1, 0xFF])
        _ = machine.receive(&input)
        #expect(machine.receive(&input) == .close)
    }

    @Test func tokensAreBoundedBeforeTheyArrive() throws {
        var input = buffer([1, 1, 0xFF, 0xFF])
        #expect(throws: SOCKSWireError.self) { try input.readGSSAPIMessage(maxTokenLength: 1000) }
        var partial = buffer([1, 1, 0, 5, 1, 2])
        #expect(try partial.readGSSAPIMessage() == nil)
        #expect(partial.readerIndex == 0, "an incomplete message is left unread")
    }

    @Test func theNegotiationDeadlineAborts() {
        var machine = SOCKSServerStateMachine(offeredMethods: [.gssapi])
        var input = buffer([5, 1, 1])
        _ = machine.receive(&input)
        #expect(machine.negotiationTimedOut() == .gssapi(GSSAPIMessage(.abort)))
    }

    @Test func levelsAsClientsAskForThem() {
        #expect(GSSAPIProtection(requested: 0) == GSSAPIProtection.none)
        #expect(GSSAPIProtection(requested: 1) == .integrity)
        #expect(GSSAPIProtection(requested: 2) == .confidentiality)
        #expect(GSSAPIProtection(requested: 3) == .confidentiality, "selective gets the stronger")
        #expect(GSSAPIProtection(requested: 4) == nil)
    }
}
