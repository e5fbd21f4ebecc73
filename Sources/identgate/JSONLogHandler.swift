import AuditLog
import Logging
import PrintableText

#if canImport(Glibc)
    import Glibc
#endif

/// `--log-format json`: one JSON object a line on standard error, for log shippers
/// (journald, Vector, Loki): `time`, `level`, `label`, `message`, `source`, and the
/// metadata as an object. Strings are escaped as the audit log's (`JSONText`), so no value
/// can break a line; the values a client or identd chose are escaped once more where they
/// are logged (`DisplayText`), as in the text form.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let (level, message, source) = (event.level, event.message, event.source)
        var fields = metadata
        if let explicit = event.metadata { fields.merge(explicit) { $1 } }
        if let error = event.error { fields["error"] = "\(error)" }
        var out = "{\"time\":\(Self.quoted(Self.timestamp())),\"level\":\(Self.quoted(level.rawValue)),"
        out += "\"label\":\(Self.quoted(label)),\"source\":\(Self.quoted(source)),\"message\":\(Self.quoted(message.description))"
        if !fields.isEmpty {
            out += ",\"metadata\":{"
            out += fields.sorted { $0.key < $1.key }.map { "\(Self.quoted($0.key)):\(Self.quoted($0.value.description))" }
                .joined(separator: ",")
            out += "}"
        }
        out += "}\n"
        // One write per line, so that lines from several threads never interleave.
        _ = out.utf8CString.withUnsafeBufferPointer { write(STDERR_FILENO, $0.baseAddress, $0.count - 1) }
    }

    static func quoted(_ text: String) -> String {
        JSONText.quoted(text)
    }

    /// `2026-12-02T13:48:19.123Z`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(now.tv_nsec / 1_000_000)
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }
}
