import AccessPolicy
import NetAddress
import SOCKSWire

/// What every session that one client connection drives answers (CONNECT and BIND today;
/// a second front door's sessions tomorrow), so that one driver carries out the lifecycle
/// they share: start, resolve, decide, the client's EOF, its departure, failure.
public protocol ClientSession: DecidingSession {
    init(facts: RequestFacts)
    mutating func start() -> Action
    mutating func resolved(_ addresses: [IPAddress]) -> Action
    /// The client shut down its sending side before the reply; `afterData`: it sent bytes
    /// after its request first.
    mutating func clientSentEOF(afterData: Bool) -> Action
    /// The client's connection closed, however: `.abandon(recordEnd:)` before the relay.
    mutating func clientLeft() -> Action
    var isEnded: Bool { get }
    /// The part of an action every session shares, which the driver carries out itself;
    /// nil for an action of this session's own.
    static func shared(_ action: Action) -> SharedSessionAction?
}

/// The actions every `ClientSession` can ask for.
public enum SharedSessionAction: Hashable, Sendable {
    /// Nothing to do (a machine's `.none`; named apart from Optional's).
    case nothing
    /// Resolve this name, then `resolved(_:)`.
    case resolve(String)
    /// Decide (and record) these facts (`step` names a decision other than the request's
    /// own in its audit record), then `received(_:)`.
    case decide(RequestFacts, step: String?)
    /// Send this reply and close. `recordEnd`: an allowed decision was recorded, so the
    /// session's end is recorded too.
    case fail(SOCKSRequestFailure, recordEnd: Bool)
    /// The client has gone before its reply: close without one. `recordEnd`: as for `fail`.
    case abandon(recordEnd: Bool)
}

extension ConnectSession: ClientSession {
    public static func shared(_ action: Action) -> SharedSessionAction? {
        switch action {
        case .none: .nothing
        case .resolve(let name): .resolve(name)
        case .decide(let facts): .decide(facts, step: nil)
        case .fail(let failure, let recordEnd): .fail(failure, recordEnd: recordEnd)
        case .abandon(let recordEnd): .abandon(recordEnd: recordEnd)
        case .connect, .connectVia, .startRelay, .closeOutbound: nil
        }
    }
}

extension BindSession: ClientSession {
    /// Before the second reply a BIND client has nothing to send: EOF means it has gone,
    /// whatever came before.
    public mutating func clientSentEOF(afterData: Bool) -> Action {
        clientSentEOF()
    }

    public static func shared(_ action: Action) -> SharedSessionAction? {
        switch action {
        case .none: .nothing
        case .resolve(let name): .resolve(name)
        case .decide(let facts, let step): .decide(facts, step: step)
        case .fail(let failure, let recordEnd): .fail(failure, recordEnd: recordEnd)
        case .abandon(let recordEnd): .abandon(recordEnd: recordEnd)
        case .listen, .listenVia, .sendListeningReply, .startRelay, .closeListener, .closePeer: nil
        }
    }
}
