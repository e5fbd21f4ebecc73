import ArgumentParser
import CommandSupport
import OfflineCommands

// The entry point is written out, not `@main`, so that `identgate run` starts on the
// main thread with no other thread alive: it binds its sockets and drops privileges
// before SwiftNIO or Swift concurrency start any (capabilities are per thread). The
// commands that are async anyway run on Swift's concurrency threads from here.
do {
    var command = try Identgate.parseAsRoot()
    if let asyncCommand = command as? AsyncParsableCommand {
        nonisolated(unsafe) var running = asyncCommand
        try waitFor { try await running.run() }
    } else {
        try command.run()
    }
} catch {
    Identgate.exit(withError: error)
}
