import ArgumentParser
import CommandSupport
import Foundation
import PrintableText
import Privileges

#if canImport(Glibc)
    import Glibc
#endif

/// `identgate upgrade`: starts this binary the way the running gateway was started, so
/// that it takes the listeners over (`--upgrade-socket`), and returns once it serves. The
/// systemd unit's ExecReload and the package's postinst use it; an operator can too.
struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace the running gateway with this binary, seamlessly (see run --upgrade-socket).",
        discussion: """
            Asks the gateway serving the upgrade socket for its command line, starts this \
            binary with it (in a session of its own), and waits until the new process \
            serves: it takes the listening sockets over, and the old one drains. Exit 0 once \
            the new process serves; 1 if it could not start (its messages say why; the \
            running gateway serves on). Only root or the gateway's user may ask.
            """
    )

    @Option(help: ArgumentHelp("The running gateway's --upgrade-socket.", valueName: "path"))
    var upgradeSocket: String

    @Option(help: ArgumentHelp("How long the new process may take to serve.", valueName: "duration"))
    var timeout: DurationArgument = "120s"

    func run() throws {
        let arguments = try runningArguments()
        guard arguments.first == "run" else {
            throw FailedStart(message: "the running gateway's command line does not start with 'run': \(DisplayText.escaped(arguments.joined(separator: " ")))")
        }
        let executable = try Self.ownExecutable()
        var ready: [Int32] = [0, 0]
        guard pipe(&ready) == 0 else { throw FailedStart(message: "pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(ready[0], F_SETFD, FD_CLOEXEC)
        let child = try Self.spawn(executable, arguments: arguments, readyDescriptor: ready[1])
        close(ready[1])
        defer { close(ready[0]) }
        let seconds = Int(timeout.amount.nanoseconds / 1_000_000_000)
        var poller = pollfd(fd: ready[0], events: Int16(POLLIN), revents: 0)
        var polled: Int32
        repeat { polled = poll(&poller, 1, Int32(clamping: seconds * 1000)) } while polled < 0 && errno == EINTR
        var answer = [UInt8](repeating: 0, count: 16)
        let count = polled > 0 ? read(ready[0], &answer, answer.count) : -1
        guard count > 0, String(decoding: answer[0..<count], as: UTF8.self).hasPrefix("serving") else {
            throw FailedStart(
                message: polled == 0
                    ? "the new identgate (pid \(child)) does not serve after \(timeout); the running gateway serves on until it does"
                    : "the new identgate (pid \(child)) did not start (its messages say why); the running gateway serves on")
        }
        print("identgate upgraded: pid \(child) serves; the gateway it took over drains its sessions")
    }

    /// The running gateway's command line, after the program's name.
    private func runningArguments() throws -> [String] {
        let connection: HandoverSocket?
        do {
            connection = try HandoverSocket.connect(to: upgradeSocket)
        } catch {
            throw FailedStart(message: "\(error)")
        }
        guard let connection else { throw FailedStart(message: "no identgate serves the upgrade socket \(upgradeSocket)") }
        defer { connection.close() }
        do {
            try connection.send(HandoverMessage.askArguments.text)
            let (text, descriptors) = try connection.receive(timeout: 10)
            for descriptor in descriptors { close(descriptor) }
            switch HandoverMessage(text) {
            case .arguments(let arguments): return arguments
            case .refused(let reason): throw FailedStart(message: "the running gateway refused: \(DisplayText.escaped(reason))")
            default: throw FailedStart(message: "the running gateway answered something else: \(DisplayText.escaped(text))")
            }
        } catch let failure as FailedStart {
            throw failure
        } catch {
            throw FailedStart(message: "\(error)")
        }
    }

    /// This binary: the one just installed, not the one the running gateway was started from.
    static func ownExecutable() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { throw FailedStart(message: "cannot find this program's path (/proc/self/exe)") }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// This process's open descriptors (read from /proc/self/fd; the listing's own is gone).
    static func openDescriptors() -> [Int32] {
        let listed = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return listed.compactMap(Int32.init).filter { fcntl($0, F_GETFD) >= 0 }
    }

    /// The new gateway, in a session of its own (it outlives this command), with the
    /// write end of the readiness pipe named in IDENTGATE_READY_FD.
    static func spawn(_ executable: String, arguments: [String], readyDescriptor: Int32) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26): not exported to Swift by name.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        let environment = ProcessInfo.processInfo.environment.filter { $0.key != "IDENTGATE_READY_FD" }
            .map { "\($0.key)=\($0.value)" } + ["IDENTGATE_READY_FD=\(readyDescriptor)"]
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        // Only standard input, output and error, and the readiness pipe, go to the new
        // gateway: not whatever the caller had open (a package manager's pipes, say, which
        // it would then wait on for as long as the gateway runs).
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for descriptor in openDescriptors() where descriptor > 2 && descriptor != readyDescriptor {
            posix_spawn_file_actions_addclose(&actions, descriptor)
        }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw FailedStart(message: "cannot start \(executable): \(String(cString: strerror(result)))") }
        return child
    }
}
