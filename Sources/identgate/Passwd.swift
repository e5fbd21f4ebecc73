import ArgumentParser
import AuditLog
import Gateway
import PrintableText

#if canImport(Glibc)
    import Glibc
#endif

struct Passwd: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a password-file line for a user: 'user:hash'.",
        discussion: """
            Reads the password from the terminal (asked twice, not echoed) or, when \
            standard input is not a terminal, from its first line. Append the output to \
            the file given to 'identgate run --password-file'.
            """
    )

    @Argument(help: "The SOCKS5 user name.")
    var user: String

    @Option(help: "Hash method: yescrypt (as Debian's /etc/shadow) or sha512.")
    var method: PasswordHasher.Method = .yescrypt

    func validate() throws {
        let bytes = Array(user.utf8)
        guard (1...255).contains(bytes.count) else { throw ValidationError("the user name must be 1 to 255 octets (RFC 1929)") }
        guard !user.contains(where: { $0 == ":" || $0 == "\n" || $0 == "#" || $0.isWhitespace }) else {
            throw ValidationError("the user name cannot contain ':', '#', spaces or line breaks")
        }
        guard DisplayText.escaped(user) == user else {
            throw ValidationError("the user name cannot contain control characters or bidirectional overrides")
        }
    }

    func run() throws {
        let password: [UInt8]
        if isatty(STDIN_FILENO) == 1 {
            let first = try Terminal.readSecret(prompt: "Password for \(user): ")
            let second = try Terminal.readSecret(prompt: "Again: ")
            guard first == second else { throw ValidationError("the two passwords differ") }
            password = first
        } else {
            password = Array((readLine(strippingNewline: true) ?? "").utf8)
        }
        guard (1...255).contains(password.count) else { throw ValidationError("the password must be 1 to 255 octets (RFC 1929)") }
        print("\(user):\(try PasswordHasher.hash(password: password, method: method))")
    }
}

extension PasswordHasher.Method: ExpressibleByArgument {}

enum Terminal {
    /// Reads one line from the terminal with echo off, restoring the terminal after.
    static func readSecret(prompt: String) throws -> [UInt8] {
        writeToStandardError(prompt)
        var saved = termios()
        tcgetattr(STDIN_FILENO, &saved)
        var silent = saved
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
        defer {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
            writeToStandardError("\n")
        }
        return Array((readLine(strippingNewline: true) ?? "").utf8)
    }
}

func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}
