import NIOCore
import SOCKSWire

/// libFuzzer entry: arbitrary bytes as a client's side of a negotiation, cut into reads
/// where the input says, with password and GSS-API results arriving in and out of turn
/// (RFC 1961 contexts complete after one or two steps, by the input). The
/// negotiation state machine must answer every event, never trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSOCKS(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let control = bytes.first else { return 0 }
    let methods: [SOCKS5AuthMethod] =
        control & 1 == 0 ? [.noAuthentication] : control & 8 == 0 ? [.usernamePassword, .noAuthentication] : [.gssapi]
    var machine = SOCKSServerStateMachine(offeredMethods: methods)
    var buffer = ByteBuffer()
    // Reads of 1 to 16 bytes, by the control byte.
    let step = Int(control >> 4) + 1
    var offset = 1
    while offset < bytes.count {
        buffer.writeBytes(bytes[offset..<min(bytes.count, offset + step)])
        offset += step
        var more = true
        while more {
            switch machine.receive(&buffer) {
            case .send: continue
            case .checkCredentials: _ = machine.credentialsChecked(valid: offset & 2 == 0)
            case .acceptGSSToken(let token):
                if token.first.map({ $0 & 1 == 0 }) ?? true {
                    _ = machine.gssContextStep(reply: token, principal: offset & 4 == 0 ? "alice@TEST.EXAMPLE" : nil)
                } else {
                    _ = machine.gssFailed()
                }
            case .chooseGSSProtection(let token):
                _ = token.count == 1 ? machine.gssProtectionChosen(reply: token) : machine.gssFailed()
            case .waitForMoreBytes, .sendAndClose, .close, .handleRequest: more = false
            }
        }
        if control & 2 != 0 { _ = machine.credentialsChecked(valid: true) }  // a late or unasked result
        if control & 4 != 0 { _ = machine.gssContextStep(reply: [1], principal: "late@TEST.EXAMPLE") }
    }
    _ = machine.negotiationTimedOut()
    return 0
}

/// SwiftPM links an executable's entry point as `fuzz_socks_main`; it hands over to
/// libFuzzer's driver with the harness above.
@_cdecl("fuzz_socks_main")
public func fuzzSOCKSMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        guard let data else { return 0 }
        return fuzzSOCKS(data, size)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
