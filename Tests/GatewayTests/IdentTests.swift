import AccessPolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetAddress
import Testing

@testable import Gateway

/// An identd for tests that can be told to answer, stall, fragment, lie, or misbehave.
final class TestIdentd: Sendable {
    enum Behavior: Sendable {
        case answer(String)
        case other(String)
        case error(String)
        /// The right answer in three pieces, 50 ms apart, ended by a bare LF.
        case fragment(String)
        /// A USERID for another port pair.
        case lie(String)
        /// Accepts, reads, says nothing.
        case stall
        case closeWithoutLineEnd
        case overlong
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let behavior: Behavior
        let queries: NIOLockedValueBox<[String]>
        var received = ""

        init(behavior: Behavior, queries: NIOLockedValueBox<[String]>) {
            self.behavior = behavior
            self.queries = queries
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            guard let end = received.firstIndex(of: "\r\n") ?? received.firstIndex(of: "\n") else { return }
            let query = String(received[..<end])
            queries.withLockedValue { $0.append(query) }
            let ports = query.split(separator: ",").map { $0.filter(\.isNumber) }
            let pair = "\(ports.first ?? ""),\(ports.last ?? "")"
            func send(_ text: String, close: Bool = true) {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).assumeIsolated().whenComplete { _ in
                    if close { context.close(promise: nil) }
                }
            }
            switch behavior {
            case .answer(let user): send("\(pair):USERID:UNIX:\(user)\r\n")
            case .other(let token): send("\(pair):USERID:OTHER:\(token)\r\n")
            case .error(let type): send("\(pair) : ERROR : \(type)\r\n")
            case .lie(let user): send("1,2:USERID:UNIX:\(user)\r\n")
            case .stall: break
            case .closeWithoutLineEnd: send("\(pair):USERID:UNIX:alice")
            case .overlong: send(String(repeating: "x", count: 1100), close: false)
            case .fragment(let user):
                let line = "\(pair) : USERID : UNIX : \(user)\n"
                let pieces = [line.prefix(3), line.dropFirst(3).prefix(10), line.dropFirst(13)].map(String.init)
                for (index, piece) in pieces.enumerated() {
                    context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(50 * Int64(index))) {
                        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: piece)), promise: nil)
                    }
                }
            }
        }
    }

    let channel: any Channel
    let queries = NIOLockedValueBox<[String]>([])
    var port: Int { channel.localAddress!.port! }

    init(_ behavior: Behavior) async throws {
        let queries = self.queries
        channel = try await ServerBootstrap(group: testGroup)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(behavior: behavior, queries: queries))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func stop() async {
        try? await channel.close()
    }
}

@Suite struct IdentTests {
    static let policyText = """
        ident from 127.0.0.0/8 timeout 1s
        allow connect from 127.0.0.0/8 ident label "verified"
        """

    /// A SOCKS4 request with `user` through a gateway whose clients' identd is `identd`
    /// (nil: none listening); returns the reply code and the queries identd saw.
    func socks4(user: String, identd behavior: TestIdentd.Behavior?) async throws -> (
        code: UInt8, queries: [String], expected: String
    ) {
        let echo = try await EchoServer()
        var identd: TestIdentd?
        if let behavior { identd = try await TestIdentd(behavior) }
        let identPort: Int
        // No identd: a port that refuses, held to the end (not a stopped server's, which a
        // test running beside could take).
        let refusing = try RefusingPort()
        defer { withExtendedLifetime(refusing) {} }
        if let identd {
            identPort = identd.port
        } else {
            identPort = Int(refusing.port)
        }
        var logger = Logger(label: "test-ident")
        logger.logLevel = .critical
        let client = IdentClient(group: testGroup, port: identPort, logger: logger)
        let policy = PolicyCompiler.compile(Self.policyText, file: "ident.policy").policy!
        // A negotiation deadline far from the ident time-out (1 s): a test can tell which
        // ended the wait even on a loaded machine.
        let gateway = try await TestGateway.start(
            configure: { $0.negotiationTimeout = .seconds(30) },
            policy: PolicyStore(PolicyEngine(policy: policy), identLookup: client.lookup))
        let socks = try await RawClient.connect(to: gateway.address)
        try await socks.send(SOCKS.socks4Connect(port: echo.port, user: user))
        let reply = try await socks.read(8, timeout: .seconds(20))
        let expectedQuery = "\(socks.channel.localAddress!.port!) , \(gateway.address.port!)"
        await socks.close()
        try await gateway.stop()
        await identd?.stop()
        await echo.stop()
        return (reply[1], identd?.queries.withLockedValue { $0 } ?? [], expectedQuery)
    }

    @Test func matchingUserIsGranted() async throws {
        let (code, queries, expected) = try await socks4(user: "alice", identd: .answer("alice"))
        #expect(code == 90)
        #expect(queries == [expected], "the query names the client's port, then the gateway's")
    }

    @Test func differentUserIs93() async throws {
        #expect(try await socks4(user: "bob", identd: .answer("alice")).code == 93)
    }

    @Test func noIdentdIs92() async throws {
        #expect(try await socks4(user: "alice", identd: nil).code == 92)
    }

    @Test func fragmentedReplyWithBareLFIsRead() async throws {
        #expect(try await socks4(user: "alice", identd: .fragment("alice")).code == 90)
    }

    @Test(arguments: [
        TestIdentd.Behavior.stall, .lie("alice"), .other("alice"), .error("NO-USER"), .error("HIDDEN-USER"),
        .closeWithoutLineEnd, .overlong,
    ])
    func noUsableAnswerIs92(behavior: TestIdentd.Behavior) async throws {
        let started = ContinuousClock.now
        #expect(try await socks4(user: "alice", identd: behavior).code == 92)
        #expect(ContinuousClock.now - started < .seconds(15), "bounded by the 1 s ident time-out, not the 30 s deadline")
    }

    @Test func lookupResultKeepsTheRawReply() async throws {
        let identd = try await TestIdentd(.error("NO-USER"))
        var logger = Logger(label: "test-ident")
        logger.logLevel = .critical
        let client = IdentClient(group: testGroup, port: identd.port, logger: logger)
        let result = await client.query(
            client: IPEndpoint("127.0.0.1:5555")!, listener: IPEndpoint("127.0.0.1:1080")!, timeout: .seconds(2))
        #expect(result.outcome == .failure(.noUser))
        #expect(result.rawReply == "5555,1080 : ERROR : NO-USER")
        #expect((result.durationMs ?? .max) < 2000)
        await identd.stop()
    }
}
