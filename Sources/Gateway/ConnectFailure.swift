import NIOCore
import SOCKSSession
import SOCKSWire

extension SOCKSRequestFailure {
    /// The truthful reply for an outbound connect that failed: the errno decides
    /// (`SOCKSRequestFailure(errno:)`, the one mapping); NIO's own time-out is a time-out.
    init(connectError error: any Error) {
        switch error {
        case ChannelError.connectTimeout:
            self = .timedOut
        case let error as IOError:
            self = SOCKSRequestFailure(errno: error.errnoCode)
        default:
            self = .generalFailure
        }
    }
}
