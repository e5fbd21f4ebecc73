import NIOCore

/// What a client sends after its request and before the reply (a pipelined request,
/// or `printf … | nc` data and EOF): kept for the relay, which sends it first. Reading
/// goes on while this holds less than `limit`, then stops until the relay starts, so a
/// client cannot make the gateway buffer more. (Stopping reading at once would cost two
/// epoll changes on every connection.)
struct EarlyClientData {
    static let limit = 64 * 1024

    private(set) var bytes: ByteBuffer?
    /// The client shut down its sending side; the relay passes the EOF on after the bytes.
    var sentEOF = false

    init(bytes: ByteBuffer? = nil, sentEOF: Bool = false) {
        self.bytes = bytes.flatMap { $0.readableBytes > 0 ? $0 : nil }
        self.sentEOF = sentEOF
    }

    mutating func append(_ buffer: inout ByteBuffer) {
        if bytes == nil {
            bytes = buffer
        } else {
            bytes?.writeBuffer(&buffer)
        }
    }

    /// True while another read may be taken.
    var acceptsMore: Bool { (bytes?.readableBytes ?? 0) < Self.limit }
}
