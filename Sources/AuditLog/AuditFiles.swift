import CZlib
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Reads audit log files line by line in bounded memory, plain or gzip-compressed
/// (rotated logs), in the order given. Lines are handed out with `FILE:LINE`.
public struct AuditFiles {
    public struct ReadError: Error, CustomStringConvertible {
        public var description: String
    }

    public let paths: [String]

    public init(paths: [String]) {
        self.paths = paths
    }

    /// Calls `body` for every line of every file; `body` returns false to stop.
    public func forEachLine(_ body: (Data, _ file: String, _ line: Int) throws -> Bool) throws {
        var progress = Progress()
        for path in paths {
            guard let file = fopen(path, "rb") else {
                throw ReadError(description: "\(path): cannot open: \(String(cString: strerror(errno)))")
            }
            defer { fclose(file) }
            var source = try ChunkSource(file: file, path: path)
            defer { source.release() }
            // Lines are found with memchr in one buffer: going through Data's collection
            // methods byte by byte cost more than reading the records.
            var pending: [UInt8] = []
            var number = 0
            var stopped = false
            while !stopped, let chunk = try source.next() {
                pending.append(contentsOf: chunk)
                let consumed = try pending.withUnsafeBufferPointer { buffer -> Int in
                    guard let base = buffer.baseAddress else { return 0 }
                    var start = 0
                    while start < buffer.count, let found = memchr(base + start, 0x0A, buffer.count - start) {
                        let newline = found.assumingMemoryBound(to: UInt8.self) - UnsafeMutablePointer(mutating: base)
                        number += 1
                        progress.tick()
                        let line = Data(buffer: UnsafeBufferPointer(rebasing: buffer[start..<newline]))
                        start = newline + 1
                        if try !body(line, path, number) {
                            stopped = true
                            break
                        }
                    }
                    return start
                }
                pending.removeFirst(consumed)
            }
            if stopped { return }
            if !pending.isEmpty {
                number += 1
                if try !body(Data(pending), path, number) { return }
            }
        }
        progress.finish()
    }

    /// Counts lines on a terminal, every million, so long runs show they are moving.
    private struct Progress {
        var lines = 0
        let visible = isatty(STDERR_FILENO) == 1

        mutating func tick() {
            lines += 1
            if visible, lines % 1_000_000 == 0 {
                var text = Array("\r\(lines / 1_000_000) M lines read…".utf8)
                _ = write(STDERR_FILENO, &text, text.count)
            }
        }

        func finish() {
            if visible, lines >= 1_000_000 {
                var text = Array("\r\u{1B}[K".utf8)
                _ = write(STDERR_FILENO, &text, text.count)
            }
        }
    }
}

extension AuditFiles {
    /// The files grouped by the gateway instance that wrote them (the `instance` of each
    /// file's first record; "" for logs from before instances were named), each group in
    /// the order given. Each group is one hash chain.
    public func byInstance() throws -> [(instance: String, paths: [String])] {
        var groups: [(instance: String, paths: [String])] = []
        for path in paths {
            let reader = LineReader(paths: [path])
            let first = try reader.next().flatMap { AuditRecord(jsonLine: $0.line) }
            let instance = first?.instance ?? ""
            if let index = groups.firstIndex(where: { $0.instance == instance }) {
                groups[index].paths.append(path)
            } else {
                groups.append((instance, [path]))
            }
        }
        return groups
    }

    /// The files of one chain split into the shared files (in the order given) and the
    /// files of processes that drained after a takeover (each starts with `chain-branch`
    /// and branches from a takeover record in the shared files).
    public func splitBranches() throws -> (shared: [String], branches: [String]) {
        var shared: [String] = []
        var branches: [String] = []
        for path in paths {
            let first = try LineReader(paths: [path]).next().flatMap { ChainFields($0.line) }
            if first?.event == .chainBranch { branches.append(path) } else { shared.append(path) }
        }
        return (shared, branches)
    }

    /// Like `forEachLine`, for the logs of several instances: each instance's files in
    /// the order given, the instances merged by record time (a k-way merge, one line per
    /// instance in memory). One instance: exactly `forEachLine`.
    public func forEachLineMerged(_ body: (Data, _ file: String, _ line: Int) throws -> Bool) throws {
        let groups = try byInstance()
        guard groups.count > 1 else { return try forEachLine(body) }
        let readers = groups.map { LineReader(paths: $0.paths) }
        var heads: [(line: Data, file: String, number: Int, time: Data)?] = try readers.map { reader in
            try reader.next().map { ($0.line, $0.file, $0.number, Self.time(of: $0.line)) }
        }
        while true {
            var earliest: Int?
            for (index, head) in heads.enumerated() {
                guard let head else { continue }
                if let best = earliest, let current = heads[best], !head.time.lexicographicallyPrecedes(current.time) { continue }
                earliest = index
            }
            guard let index = earliest, let head = heads[index] else { return }
            if try !body(head.line, head.file, head.number) { return }
            heads[index] = try readers[index].next().map { ($0.line, $0.file, $0.number, Self.time(of: $0.line)) }
        }
    }

    /// A record's `"time"` value, as bytes (ISO 8601 UTC sorts as text); empty if none,
    /// so a damaged line goes first rather than holding its instance back.
    static func time(of line: Data) -> Data {
        let key = Data("\"time\":\"".utf8)
        guard let found = line.range(of: key) else { return Data() }
        let start = found.upperBound
        let end = line[start...].firstIndex(of: UInt8(ascii: "\"")) ?? line.endIndex
        return line[start..<end]
    }

    /// The lines of some files one at a time (for merging several logs), plain or gzip.
    final class LineReader {
        private var paths: ArraySlice<String>
        private var file: UnsafeMutablePointer<FILE>?
        private var source: ChunkSource?
        private var path = ""
        private var pending: [UInt8] = []
        private var start = 0
        private var number = 0

        init(paths: [String]) {
            self.paths = paths[...]
        }

        deinit { closeFile() }

        private func closeFile() {
            source?.release()
            source = nil
            if let file { fclose(file) }
            file = nil
        }

        func next() throws -> (line: Data, file: String, number: Int)? {
            while true {
                if let newline = pending[start...].firstIndex(of: 0x0A) {
                    let line = Data(pending[start..<newline])
                    start = newline + 1
                    number += 1
                    return (line, path, number)
                }
                if source != nil, let chunk = try source?.next() {
                    pending.removeFirst(start)
                    start = 0
                    pending.append(contentsOf: chunk)
                    continue
                }
                if source != nil {
                    // The file ended; a last line without a newline is still a line.
                    closeFile()
                    if start < pending.count {
                        let line = Data(pending[start...])
                        pending = []
                        start = 0
                        number += 1
                        return (line, path, number)
                    }
                }
                guard let nextPath = paths.popFirst() else { return nil }
                guard let opened = fopen(nextPath, "rb") else {
                    throw ReadError(description: "\(nextPath): cannot open: \(String(cString: strerror(errno)))")
                }
                file = opened
                path = nextPath
                number = 0
                pending = []
                start = 0
                source = try ChunkSource(file: opened, path: nextPath)
            }
        }
    }
}

/// Chunks of a file's content, inflated when it starts with the gzip magic. zlib keeps
/// pointers into its buffers between calls, so they are allocated once, not arrays.
private struct ChunkSource {
    static let size = 1 << 16
    let file: UnsafeMutablePointer<FILE>
    let path: String
    let input = UnsafeMutablePointer<UInt8>.allocate(capacity: ChunkSource.size)
    let output = UnsafeMutablePointer<UInt8>.allocate(capacity: 4 * ChunkSource.size)
    var gzip: UnsafeMutablePointer<z_stream>?
    var finished = false
    /// Octets read to look for the gzip magic, still to be used.
    var peeked = 0

    init(file: UnsafeMutablePointer<FILE>, path: String) throws {
        self.file = file
        self.path = path
        peeked = fread(input, 1, 2, file)
        if peeked == 2, input[0] == 0x1f, input[1] == 0x8b {
            let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
            stream.initialize(to: z_stream())
            // 16 + MAX_WBITS: a gzip wrapper, not zlib's.
            guard inflateInit2_(stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw AuditFiles.ReadError(description: "\(path): cannot start gzip decompression")
            }
            stream.pointee.next_in = input
            stream.pointee.avail_in = uInt(peeked)
            peeked = 0
            gzip = stream
        }
    }

    /// Frees the buffers (and zlib's state, if the file ended early).
    mutating func release() {
        input.deallocate()
        output.deallocate()
        if let gzip {
            inflateEnd(gzip)
            gzip.deallocate()
            self.gzip = nil
        }
    }

    mutating func next() throws -> Data? {
        guard !finished else { return nil }
        guard let gzip else {
            let count = peeked + fread(input + peeked, 1, Self.size - peeked, file)
            peeked = 0
            guard count > 0 else {
                finished = true
                return nil
            }
            return Data(bytes: input, count: count)
        }
        while true {
            if gzip.pointee.avail_in == 0 {
                let count = fread(input, 1, Self.size, file)
                guard count > 0 else {
                    finished = true
                    return nil
                }
                gzip.pointee.next_in = input
                gzip.pointee.avail_in = uInt(count)
            }
            gzip.pointee.next_out = output
            gzip.pointee.avail_out = uInt(4 * Self.size)
            let status = inflate(gzip, Z_NO_FLUSH)
            let produced = 4 * Self.size - Int(gzip.pointee.avail_out)
            if status == Z_STREAM_END {
                // Concatenated gzip members follow, or the file ends.
                inflateReset(gzip)
            } else if status != Z_OK, status != Z_BUF_ERROR {
                throw AuditFiles.ReadError(description: "\(path): damaged gzip data (zlib status \(status))")
            }
            if produced > 0 { return Data(bytes: output, count: produced) }
        }
    }
}
