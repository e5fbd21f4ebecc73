import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import SOCKSWire
import Synchronization

/// A protocol a listener serves.
public enum ListenerProtocol: String, Hashable, Sendable, CaseIterable {
    case socks, http
}

/// The code that carries a listener's connections (`--connection-driver`;
/// docs/architecture.md, "The direct connection driver").
public enum ConnectionDriver: String, Hashable, Sendable, CaseIterable {
    /// SwiftNIO's channels for everything.
    case nio
    /// Our own epoll loops for SOCKS CONNECT to an address decided at once; everything
    /// else is handed to SwiftNIO mid-negotiation.
    case direct
}

/// The settings the operator chooses on the command line.
public struct GatewayConfiguration: Sendable {
    public var listen: [IPEndpoint] = [IPEndpoint(address: .v4(IPv4Address(127, 0, 0, 1)), port: 1080)]
    /// What the listeners serve (`--protocols`): a connection's first byte tells SOCKS
    /// (4 or 5) from an HTTP proxy request (a method's capital letter).
    public var protocols: Set<ListenerProtocol> = [.socks, .http]
    /// From accept until a complete request (and authentication) has arrived.
    public var negotiationTimeout: TimeAmount = .seconds(30)
    /// For the outbound connect, and separately for resolving a destination name.
    /// The SOCKS4 text suggests about two minutes; 30 s fails faster at an egress point,
    /// where a destination that has not answered in 30 s is almost never coming.
    public var connectTimeout: TimeAmount = .seconds(30)
    /// `--resolve-cache`: how long a destination name's addresses are kept after a lookup
    /// that found some (zero: every request looks its name up). See docs/architecture.md,
    /// "Destination names".
    public var resolveCacheTTL: TimeAmount = .seconds(10)
    /// A relay with no bytes moving either way for this long is closed; nil: never.
    public var idleTimeout: TimeAmount? = .hours(1)
    /// BIND: how long to wait for the inbound connection after the first reply.
    public var bindTimeout: TimeAmount = .minutes(2)
    /// The first session number. 1 on a fresh start; after a takeover, past every number
    /// the predecessor can still give out (`SessionNumbers.afterTakeover`), so that
    /// session numbers stay unique across the switch.
    public var firstSessionID: UInt64 = 1
    public var limits = SOCKSLimits()
    /// The SOCKS5 methods offered, most preferred first. Empty: "none", or "password"
    /// when a password file is given (a password file then means a password is needed;
    /// offer both to let the policy's `auth` condition decide).
    public var methods: [SOCKS5AuthMethod] = []
    /// `--external`: the addresses outbound traffic leaves from (CONNECT, BIND listeners,
    /// UDP relays), the first of the destination's family; empty: the kernel chooses.
    public var external: [IPAddress] = []
    /// `--proxy-protocol-from`: load balancers' networks. A connection from one must start
    /// with a PROXY protocol header naming the real client; from anywhere else, one is
    /// refused (it would be a way to lie about the source).
    public var proxyProtocolFrom: [IPNetwork] = []
    public var connectionDriver = ConnectionDriver.nio
    /// `--busy-poll`: how long a direct loop that just had events polls for the next ones
    /// before it sleeps (zero: it sleeps at once). See docs/architecture.md.
    public var busyPoll = TimeAmount.zero
    /// The longest `busyPoll` taken: past this, a sleep and a wake-up cost less than the
    /// polling they would save.
    public static let maximumBusyPoll = TimeAmount.milliseconds(1)

    public init() {}

    /// Where an outbound socket toward `destination` is bound.
    enum OutboundSource: Equatable {
        /// No `--external`: the kernel chooses the source.
        case kernel
        case address(IPAddress)
        /// `--external` names no address of this family: the destination is unreachable.
        case none
    }

    func outboundSource(toward destination: IPAddress) -> OutboundSource {
        guard !external.isEmpty else { return .kernel }
        return external.first { $0.isIPv6 == destination.isIPv6 }.map(OutboundSource.address) ?? .none
    }

    /// `--external ADDR|IFACE`: an address assigned to this host, or every address of a
    /// network interface (in the interface's order); an error says why not.
    public static func externalAddresses(_ text: String) throws -> [IPAddress] {
        if let address = IPAddress(text) {
            guard LocalAddress.isAssigned(address) else {
                throw ExternalAddressError(description: "--external \(text): not an address of this host")
            }
            return [address]
        }
        let addresses = LocalAddress.ofInterface(text)
        guard !addresses.isEmpty else {
            throw ExternalAddressError(description: "--external \(text): neither an address of this host nor an interface with an address")
        }
        return addresses
    }
}

public struct ExternalAddressError: Error, CustomStringConvertible {
    public let description: String
}

/// What every connection shares: the configuration and the services handlers call. A
/// class, so that a session holds one reference rather than copying (and retaining)
/// every field.
final class GatewayContext: Sendable {
    /// BIND listening sockets open right now (for tests and metrics).
    let openBindListeners = NIOLockedValueBox(0)
    /// The addresses the gateway serves on, once bound: a CONNECT to one of them is a
    /// loop through the gateway itself (`isOwnListener`).
    let ownListeners = NIOLockedValueBox<[IPEndpoint]>([])
    /// Accepts that failed since the start (for tests and metrics), and the episode under
    /// way, shared by every listening socket so that it is logged once.
    let acceptFailures = NIOLockedValueBox(AcceptFailureCount())
    let configuration: GatewayConfiguration
    let policy: any PolicyDecider
    let credentials: (any PasswordVerifier)?
    /// RFC 1961's acceptor credentials (`--gssapi-keytab`); nil: GSS-API not offered.
    let gssAcceptor: GSSAcceptor?
    /// RFC 4559's (`Negotiate` for HTTP clients, `--http-gssapi-service`); nil: not offered.
    let httpGSSAcceptor: GSSAcceptor?
    let resolver: HostResolver
    let threadPool: NIOThreadPool
    let logger: Logger
    /// Where every decision and session end is recorded; nil: no audit log (tests).
    let audit: AuditWriter?
    /// What is counted for `--metrics-listen`; nil: nothing is.
    let metrics: GatewayMetrics?
    /// Log lines a peer can repeat at will, logged once per episode.
    let repeated: RepeatedEvents
    /// Numbers the sessions from `firstSessionID`, whether or not there is an audit log
    /// (the log and the debug log both name sessions by it).
    private let sessionCounter: Synchronization.Atomic<UInt64>
    /// Set when a successor has taken the listeners over: the quiesce event then means
    /// "no new connections here", not "stop": connections still negotiating go on to
    /// their sessions, which run until they end (or the drain time-out).
    let draining = Synchronization.Atomic<Bool>(false)

    /// How much a relayed socket reads at once: starts small (an idle connection holds
    /// little) and grows with the traffic, up to 256 KiB rather than NIO's 64 KiB, so a
    /// bulk stream takes a quarter of the system calls.
    static let relayReceiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 256 * 1024)

    /// The SOCKS5 methods offered, most preferred first.
    let offeredMethods: [SOCKS5AuthMethod]

    init(
        configuration: GatewayConfiguration, policy: any PolicyDecider, credentials: (any PasswordVerifier)?,
        resolver: HostResolver, threadPool: NIOThreadPool, logger: Logger, audit: AuditWriter?, gssAcceptor: GSSAcceptor? = nil,
        httpGSSAcceptor: GSSAcceptor? = nil, metrics: GatewayMetrics? = nil
    ) {
        self.httpGSSAcceptor = httpGSSAcceptor
        self.metrics = metrics
        self.sessionCounter = Synchronization.Atomic(configuration.firstSessionID)
        self.repeated = RepeatedEvents(logger: logger, metrics: metrics)
        self.gssAcceptor = gssAcceptor
        self.configuration = configuration
        self.policy = policy
        self.credentials = credentials
        self.resolver = resolver
        self.threadPool = threadPool
        self.logger = logger
        self.audit = audit
        // By default GSS-API first when a keytab is given, then a password when a password
        // file is, else no authentication; rules with `auth` say who needs which.
        self.offeredMethods =
            !configuration.methods.isEmpty
            ? configuration.methods
            : (gssAcceptor == nil ? [] : [.gssapi]) + (credentials == nil ? [.noAuthentication] : [.usernamePassword])
    }
}

extension GatewayContext {
    func nextSessionID() -> UInt64 {
        sessionCounter.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// The number the next session would get (for a successor: `SessionNumbers`).
    var upcomingSessionID: UInt64 { sessionCounter.load(ordering: .relaxed) }

    /// True once the listeners are handed to a successor (`GatewayServer.drain`).
    var isDraining: Bool { draining.load(ordering: .relaxed) }
}

struct AcceptFailureCount {
    var total = 0
    var episode: (started: ContinuousClock.Instant, failures: Int, lastFailure: ContinuousClock.Instant)?
}

extension GatewayContext {
    /// True when `destination` may reach the gateway itself: a port it listens on (SOCKS or
    /// metrics) at any spelling of this host. The kernel's meaning is what counts, not the
    /// listeners' own addresses: a connect to 0.0.0.0 or :: reaches the local host (so
    /// does ::ffff:0.0.0.0), every loopback address and every address of every interface
    /// is this host, and a wildcard listener answers on all of them. So any address of
    /// this host (a UDP socket can be bound to it) on a listening port is refused, even
    /// where a specific listener would not answer: being wrong costs one refused relay to
    /// a local port, while being right closes a loop.
    func isOwnListener(_ destination: IPEndpoint) -> Bool {
        let listeners = ownListeners.withLockedValue { $0 }
        guard listeners.contains(where: { $0.port == destination.port }) else { return false }
        let address = destination.address.unmapped
        if listeners.contains(where: { $0.port == destination.port && $0.address.unmapped == address }) { return true }
        return address == .v4(.any) || address == .v6(.any) || LocalAddress.isAssigned(address)
    }

    /// True when a connection from `peer` must carry a PROXY protocol header.
    func isLoadBalancer(_ peer: IPAddress) -> Bool {
        let address = peer.unmapped
        return configuration.proxyProtocolFrom.contains { $0.contains(address) }
    }
}
