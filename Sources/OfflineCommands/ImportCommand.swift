import ArgumentParser
import CommandSupport
import DanteImport
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `identgate import dante`: a start from the gateway an operator already runs.
public struct ImportCommand: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Translate another gateway's configuration into a policy and a run command line.",
        subcommands: [ImportDante.self]
    )
}

public struct ImportDante: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "dante",
        abstract: "Translate Dante's sockd.conf: its rules into a policy, its server settings into 'identgate run' options.",
        discussion: """
            Client rules, then socks rules, first match, the implicit block: Dante's order and meaning are \
            kept. What identgate cannot say the same way is a 'file:line: warning:' on standard error and \
            a '# warning' comment in the policy, never dropped silently. Check the result with \
            'identgate check' and try it with 'identgate explain'.
            """
    )

    @Argument(help: "Dante's configuration (sockd.conf, danted.conf).")
    var file: String

    @Option(help: ArgumentHelp("Write the policy here instead of standard output.", valueName: "file"))
    var output: String?

    public func run() async throws {
        let text: String
        do {
            text = try String(contentsOfFile: file, encoding: .utf8)
        } catch {
            FileHandle.standardError.write(Data("\(file): cannot read: \(error.localizedDescription)\n".utf8))
            throw ExitCode(2)
        }
        let config: DanteConfig
        do {
            config = try DanteConfig(parsing: text)
        } catch {
            FileHandle.standardError.write(Data("\(file):\(error.line): error: \(error.message)\n".utf8))
            throw ExitCode(2)
        }
        let translation = DanteTranslator.translate(config, file: (file as NSString).lastPathComponent, servicePort: Self.servicePort)
        for warning in translation.warnings { FileHandle.standardError.write(Data((warning + "\n").utf8)) }
        if let output {
            do {
                try Data(translation.policy.utf8).write(to: URL(fileURLWithPath: output), options: .atomic)
            } catch {
                FileHandle.standardError.write(Data("\(output): cannot write: \(error.localizedDescription)\n".utf8))
                throw ExitCode(2)
            }
            print("identgate run --policy \(output) " + translation.runArguments.joined(separator: " "))
        } else {
            print(translation.policy, terminator: "")
        }
    }

    /// A service's TCP port from the services database, as Dante looks `port = NAME` up.
    static func servicePort(_ name: String) -> Int? {
        guard let entry = getservbyname(name, "tcp") else { return nil }
        return Int(UInt16(bigEndian: UInt16(truncatingIfNeeded: entry.pointee.s_port)))
    }
}
