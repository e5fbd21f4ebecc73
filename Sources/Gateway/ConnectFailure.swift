import NIOCore
import SOCKSWire

#if canImport(Glibc)
    import Glibc
#endif

extension SOCKSRequestFailure {
    /// The truthful reply for an outbound connect that failed: the errno decides.
    /// Errors with no SOCKS meaning are general failures.
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

    init(errno code: Int32) {
        switch code {
        case ECONNREFUSED: self = .connectionRefused
        case ENETUNREACH, ENETDOWN: self = .networkUnreachable
        case EHOSTUNREACH, EHOSTDOWN: self = .hostUnreachable
        case ETIMEDOUT: self = .timedOut
        default: self = .generalFailure
        }
    }
}
