import NIOCore
import NetAddress
import PosixEndpoint

#if canImport(Glibc)
    import Glibc
#endif

struct ConnectionError: Error {
    var message: String
    var timedOut = false
}

/// A blocking TCP connection whose every wait is bounded by `timeout` (poll).
final class Connection {
    private let descriptor: Int32
    private let timeout: Double
    let local: IPEndpoint
    let peer: IPEndpoint

    init(to endpoint: IPEndpoint, timeout: Double) throws {
        let family = endpoint.address.isIPv6 ? AF_INET6 : AF_INET
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard descriptor >= 0 else { throw ConnectionError(message: String(cString: strerror(errno))) }
        self.descriptor = descriptor
        self.timeout = timeout
        self.peer = endpoint
        let started = endpoint.posixAddress.withSockAddr { Glibc.connect(descriptor, $0, $1) }
        if started != 0 {
            guard errno == EINPROGRESS else {
                let message = String(cString: strerror(errno))
                Glibc.close(descriptor)
                throw ConnectionError(message: message)
            }
            do {
                try Self.wait(descriptor, for: Int16(POLLOUT), timeout: timeout)
            } catch {
                Glibc.close(descriptor)
                throw error
            }
            var problem: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &problem, &size)
            guard problem == 0 else {
                Glibc.close(descriptor)
                throw ConnectionError(message: String(cString: strerror(problem)))
            }
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        local = IPEndpoint(storage) ?? endpoint
    }

    private static func wait(_ descriptor: Int32, for events: Int16, timeout: Double) throws {
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        let ready = poll(&entry, 1, Int32(timeout * 1000))
        guard ready > 0 else {
            throw ConnectionError(message: ready == 0 ? "no answer in \(timeout) s" : String(cString: strerror(errno)), timedOut: ready == 0)
        }
    }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            try Self.wait(descriptor, for: Int16(POLLOUT), timeout: timeout)
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else {
                if written < 0, errno == EAGAIN || errno == EINTR { continue }
                throw ConnectionError(message: "the server closed the connection (\(String(cString: strerror(errno))))")
            }
            offset += written
        }
    }

    /// Appends what arrives; false at the end of the stream when `allowEOF`, else an error.
    @discardableResult
    func read(into buffer: inout ByteBuffer, allowEOF: Bool = false) throws -> Bool {
        try Self.wait(descriptor, for: Int16(POLLIN), timeout: timeout)
        var chunk = [UInt8](repeating: 0, count: 16384)
        let count = chunk.withUnsafeMutableBytes { Glibc.recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count > 0 {
            buffer.writeBytes(chunk[..<count])
            return true
        }
        if count == 0 {
            if allowEOF { return false }
            throw ConnectionError(message: "the server closed the connection")
        }
        if errno == EAGAIN || errno == EINTR { return true }
        throw ConnectionError(message: String(cString: strerror(errno)))
    }

    /// Our side is done sending: the destination sees the end of the stream.
    func shutdownOutput() {
        Glibc.shutdown(descriptor, Int32(SHUT_WR))
    }

    func close() {
        Glibc.close(descriptor)
    }

    /// One datagram to `endpoint`, and the first one back (nil after the time-out).
    static func datagramExchange(_ bytes: [UInt8], to endpoint: IPEndpoint, timeout: Double) throws -> [UInt8]? {
        let descriptor = socket(endpoint.address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw ConnectionError(message: String(cString: strerror(errno))) }
        defer { Glibc.close(descriptor) }
        let sent = endpoint.posixAddress.withSockAddr { address, length in
            bytes.withUnsafeBytes { Glibc.sendto(descriptor, $0.baseAddress, $0.count, 0, address, length) }
        }
        guard sent == bytes.count else { throw ConnectionError(message: String(cString: strerror(errno))) }
        do {
            try wait(descriptor, for: Int16(POLLIN), timeout: timeout)
        } catch {
            return nil
        }
        var reply = [UInt8](repeating: 0, count: 65536)
        let count = reply.withUnsafeMutableBytes { Glibc.recv(descriptor, $0.baseAddress, $0.count, 0) }
        return count > 0 ? Array(reply[..<count]) : nil
    }
}

/// The first line of a file, for a password; nil if it cannot be read.
func firstLine(of path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    while bytes.count < 4096 {
        let character = fgetc(file)
        if character == EOF || character == 10 { break }
        bytes.append(UInt8(truncatingIfNeeded: character))
    }
    if bytes.last == 13 { bytes.removeLast() }
    return String(decoding: bytes, as: UTF8.self)
}
