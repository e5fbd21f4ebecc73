import Dispatch
import NIOConcurrencyHelpers

/// Runs async work to its end from synchronous code (the main thread waits; the work
/// runs on Swift's concurrency threads, which start only now).
public func waitFor(_ work: @escaping @Sendable () async throws -> Void) throws {
    let result = NIOLockedValueBox<Result<Void, any Error>>(.success(()))
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do {
            try await work()
        } catch {
            result.withLockedValue { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    try result.withLockedValue { $0 }.get()
}

/// Exits with status 1 and a one-line message, without the usage text that a
/// ValidationError would print.
public struct FailedStart: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }

    public init(message: String) {
        self.message = message
    }
}
