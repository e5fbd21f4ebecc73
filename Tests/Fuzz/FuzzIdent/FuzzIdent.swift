import AccessPolicy
import IdentProtocol
import SOCKSSession

/// libFuzzer entry: arbitrary bytes as what an identd sends back. The reply must be
/// classified, never trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIdent(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let query = IdentQuery(serverPort: 6193, clientPort: 23)
    _ = IdentReply.answer(to: bytes, for: query)
    _ = IdentReply.closedEarly(after: bytes)
    return 0
}

/// SwiftPM links an executable's entry point as `fuzz_ident_main`; it hands over to
/// libFuzzer's driver with the harness above.
@_cdecl("fuzz_ident_main")
public func fuzzIdentMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        guard let data else { return 0 }
        return fuzzIdent(data, size)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
