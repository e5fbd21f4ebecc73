import AuditLog
import PrintableText
import Foundation

/// libFuzzer entry: arbitrary bytes as one line of an audit log. The hand-written reader
/// must read it or hand it to JSONDecoder, never trap, and the chain verifier must
/// accept or report it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAudit(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let line = Data(bytes: data, count: size)
    if let record = AuditRecord.decode(line: line, fallback: JSONDecoder()) {
        _ = record.requestFacts
        _ = DisplayText.escaped(record.claimedUser ?? "")
    }
    var verifier = ChainVerifier()
    _ = try? verifier.check(line, at: "fuzz:1")
    return 0
}

/// SwiftPM links an executable's entry point as `fuzz_audit_main`; it hands over to
/// libFuzzer's driver with the harness above.
@_cdecl("fuzz_audit_main")
public func fuzzAuditMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        guard let data else { return 0 }
        return fuzzAudit(data, size)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
