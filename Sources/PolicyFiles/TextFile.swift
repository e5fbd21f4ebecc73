#if canImport(Glibc)
    import Glibc
#endif

/// Small whole-file reads for configuration (policies, password files), with errors
/// that name the file.
public enum TextFile {
    public struct ReadError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public static func read(_ path: String) throws -> String {
        guard let file = fopen(path, "r") else {
            throw ReadError(description: "\(path): cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        guard ferror(file) == 0 else { throw ReadError(description: "\(path): read error: \(String(cString: strerror(errno)))") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw ReadError(description: "\(path): not UTF-8 text") }
        return text
    }
}
