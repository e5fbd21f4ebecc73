import AccessPolicy

/// libFuzzer entry: arbitrary bytes as a policy file (and as its tests file). The
/// compiler must answer with diagnostics, never trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPolicy(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let compilation = PolicyCompiler.compile(text, file: "fuzz.policy", tests: (text: text, file: "fuzz.policy.tests"))
    if let policy = compilation.policy {
        let engine = PolicyEngine(policy: policy)
        for expectation in policy.expectations.prefix(8) { _ = engine.decideImmediately(expectation.facts) }
    }
    return 0
}

/// SwiftPM links an executable's entry point as `fuzz_policy_main`; it hands over to
/// libFuzzer's driver with the harness above.
@_cdecl("fuzz_policy_main")
public func fuzzPolicyMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        guard let data else { return 0 }
        return fuzzPolicy(data, size)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
