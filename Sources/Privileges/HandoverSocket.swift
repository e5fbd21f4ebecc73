import CPrivileges

#if canImport(Glibc)
    import Glibc
#endif

/// The UNIX socket over which a running gateway hands its listening sockets to its
/// successor (`--upgrade-socket`, docs/operations.md "Seamless upgrade"): SOCK_SEQPACKET,
/// so that every message arrives whole and on its own, with the descriptors it carries
/// (SCM_RIGHTS) attached to it. Written with the system calls directly: the successor
/// uses it before any thread exists, and SwiftNIO's stream channels carry no descriptors.
public struct HandoverSocket: Sendable {
    public let descriptor: Int32

    public struct Failure: Error, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    /// Who is at the other end, as the kernel saw it when the connection was made.
    public struct Peer: Sendable, CustomStringConvertible {
        public var pid: Int32
        public var uid: UInt32
        public var description: String { "pid \(pid), uid \(uid)" }
    }

    /// The largest message either side sends; longer ones are cut, and refused.
    static let maximumMessage = 16 * 1024
    /// SCM_MAX_FD: the kernel passes at most this many descriptors in one message.
    public static let maximumDescriptors = 253

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Connects to the gateway serving `path`; nil when none does (no such file, or a
    /// file no process listens on any more).
    public static func connect(to path: String) throws(Failure) -> HandoverSocket? {
        let descriptor = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "upgrade socket: \(String(cString: strerror(errno)))") }
        let connected = try withAddress(path) { Glibc.connect(descriptor, $0, $1) }
        guard connected == 0 else {
            let code = errno
            Glibc.close(descriptor)
            if code == ENOENT || code == ECONNREFUSED { return nil }
            throw Failure(description: "cannot connect to the upgrade socket \(path): \(String(cString: strerror(code)))")
        }
        return HandoverSocket(descriptor: descriptor)
    }

    /// A listening socket at `path` for successors to connect to. A file left there by a
    /// process that is gone is replaced; one a process still listens on is an error (that
    /// process should have been taken over). Anyone may connect (mode 0666): who may
    /// take the sockets is decided by the peer's credentials (`peer`), not the file mode.
    public static func listen(at path: String) throws(Failure) -> Int32 {
        if let running = try connect(to: path) {
            running.close()
            throw Failure(description: "another identgate serves the upgrade socket \(path): it would have been taken over; is it refusing?")
        }
        unlink(path)
        let descriptor = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "upgrade socket: \(String(cString: strerror(errno)))") }
        let bound = try withAddress(path) { bind(descriptor, $0, $1) }
        guard bound == 0, chmod(path, 0o666) == 0, Glibc.listen(descriptor, 8) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw Failure(description: "cannot listen on the upgrade socket \(path): \(reason)")
        }
        return descriptor
    }

    /// Waits for the next successor on `listener`; nil once the listener is closed.
    public static func accept(on listener: Int32) -> HandoverSocket? {
        while true {
            let descriptor = Glibc.accept(listener, nil, nil)
            if descriptor >= 0 {
                _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
                return HandoverSocket(descriptor: descriptor)
            }
            if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                if errno != EINTR { usleep(100_000) }
                continue
            }
            return nil
        }
    }

    private static func withAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(Failure) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Failure(description: "the upgrade socket's path '\(path)' is empty or longer than 107 bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// SO_PEERCRED: the process at the other end.
    public var peer: Peer? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        guard identgate_peer_credentials(descriptor, &pid, &uid) == 0 else { return nil }
        return Peer(pid: pid, uid: uid)
    }

    /// Sends one message, with `descriptors` attached (duplicated into the receiver).
    public func send(_ text: String, descriptors: [Int32] = []) throws(Failure) {
        var bytes = Array(text.utf8)
        guard bytes.count <= Self.maximumMessage, descriptors.count <= Self.maximumDescriptors else {
            throw Failure(description: "upgrade: a message too large to send")
        }
        let controlLength = descriptors.isEmpty ? 0 : cmsgSpace(descriptors.count)
        var control = [UInt8](repeating: 0, count: max(controlLength, 1))
        let sent = Self.withMessage(&bytes, control: &control, controlLength: controlLength) { message in
            if !descriptors.isEmpty, let base = message.msg_control {
                let header = base.assumingMemoryBound(to: cmsghdr.self)
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                header.pointee.cmsg_len = cmsgLength(descriptors.count)
                let data = (base + cmsgHeaderSpace).assumingMemoryBound(to: Int32.self)
                for (index, descriptor) in descriptors.enumerated() { data[index] = descriptor }
            }
            return Glibc.sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL))
        }
        guard sent == bytes.count else {
            throw Failure(description: "upgrade: the other process is gone (\(String(cString: strerror(errno))))")
        }
    }

    /// Receives one message and the descriptors it carries (closed on exec); waits at
    /// most `timeout` seconds (nil: as long as it takes). A closed connection is an error.
    public func receive(timeout seconds: Int?) throws(Failure) -> (text: String, descriptors: [Int32]) {
        if let seconds {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            var ready: Int32
            repeat { ready = poll(&poller, 1, Int32(seconds * 1000)) } while ready < 0 && errno == EINTR
            guard ready > 0 else { throw Failure(description: "upgrade: no answer within \(seconds) s") }
        }
        var bytes = [UInt8](repeating: 0, count: Self.maximumMessage + 1)
        let controlLength = cmsgSpace(Self.maximumDescriptors)
        var control = [UInt8](repeating: 0, count: controlLength)
        var received: [Int32] = []
        var flags: Int32 = 0
        let count = Self.withMessage(&bytes, control: &control, controlLength: controlLength) { message in
            var result: Int
            repeat {
                result = Glibc.recvmsg(descriptor, &message, Int32(MSG_CMSG_CLOEXEC))
            } while result < 0 && errno == EINTR
            flags = message.msg_flags
            // One control message is sent (`send`): its descriptors are all there is.
            let controlReceived = Int(message.msg_controllen)
            if controlReceived >= cmsgHeaderSpace, let base = message.msg_control {
                let header = base.assumingMemoryBound(to: cmsghdr.self).pointee
                if header.cmsg_level == SOL_SOCKET, header.cmsg_type == Int32(SCM_RIGHTS) {
                    let length = min(Int(header.cmsg_len), controlReceived)
                    let number = max(0, length - cmsgHeaderSpace) / MemoryLayout<Int32>.size
                    let data = (base + cmsgHeaderSpace).assumingMemoryBound(to: Int32.self)
                    received = (0..<number).map { data[$0] }
                }
            }
            return result
        }
        guard count > 0 else {
            for descriptor in received { Glibc.close(descriptor) }
            throw Failure(description: count == 0 ? "upgrade: the other process closed the connection" : "upgrade: \(String(cString: strerror(errno)))")
        }
        guard count <= Self.maximumMessage, flags & Int32(MSG_CTRUNC) == 0 else {
            for descriptor in received { Glibc.close(descriptor) }
            throw Failure(description: "upgrade: a message too large, refused")
        }
        return (String(decoding: bytes[0..<count], as: UTF8.self), received)
    }

    /// A message header over `payload` and `control` (its first `controlLength` bytes;
    /// none if 0), for sendmsg and recvmsg.
    private static func withMessage(
        _ payload: inout [UInt8], control: inout [UInt8], controlLength: Int, _ body: (inout msghdr) -> Int
    ) -> Int {
        payload.withUnsafeMutableBytes { payloadBytes in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: payloadBytes.baseAddress, iov_len: payloadBytes.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    if controlLength > 0 {
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = controlLength
                    }
                    return body(&message)
                }
            }
        }
    }

    public func close() {
        Glibc.close(descriptor)
    }
}

// CMSG_ALIGN, CMSG_SPACE, CMSG_LEN: macros in C, so written out here.
private func cmsgAlign(_ length: Int) -> Int {
    (length + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1)
}

private let cmsgHeaderSpace = cmsgAlign(MemoryLayout<cmsghdr>.size)

private func cmsgSpace(_ descriptors: Int) -> Int {
    cmsgHeaderSpace + cmsgAlign(descriptors * MemoryLayout<Int32>.size)
}

private func cmsgLength(_ descriptors: Int) -> Int {
    cmsgHeaderSpace + descriptors * MemoryLayout<Int32>.size
}
