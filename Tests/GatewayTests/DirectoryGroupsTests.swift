import AccessPolicy
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Gateway

/// The directory adapter's promises, with a scripted directory in place of NSS: one lookup
/// per user at a time, answers kept for the cache time, "unavailable" kept only briefly.
@Suite struct DirectoryGroupsTests {
    /// Counts the lookups and answers what the test sets; `gate` holds them until opened.
    final class ScriptedDirectory: Sendable {
        let answer = NIOLockedValueBox(GroupAnswer.member(of: ["staff"]))
        let lookups = NIOLockedValueBox(0)
        let open = NIOLockedValueBox(true)
        var resolve: @Sendable (String) -> GroupAnswer {
            { _ in
                self.lookups.withLockedValue { $0 += 1 }
                while !self.open.withLockedValue({ $0 }) { usleep(1000) }
                return self.answer.withLockedValue { $0 }
            }
        }
    }

    @Test func concurrentAsksForOneUserShareOneLookupAndLaterOnesHitTheCache() async throws {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let directory = ScriptedDirectory()
        directory.open.withLockedValue { $0 = false }
        let groups = DirectoryGroups(threadPool: pool, ttl: .hours(1), resolve: directory.resolve)
        async let first = groups.groups(of: "alice")
        async let second = groups.groups(of: "alice")
        try await Task.sleep(for: .milliseconds(50))
        directory.open.withLockedValue { $0 = true }
        #expect(await [first, second] == [.member(of: ["staff"]), .member(of: ["staff"])])
        #expect(await groups.groups(of: "alice") == .member(of: ["staff"]))
        #expect(groups.cached("alice") == .member(of: ["staff"]))
        #expect(groups.cached("bob") == nil, "never asked")
        #expect(directory.lookups.withLockedValue { $0 } == 1)
        try await pool.shutdownGracefully()
    }

    @Test func anUnavailableDirectoryIsAskedAgainSoonAndNoSuchUserIsKept() async throws {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let directory = ScriptedDirectory()
        directory.answer.withLockedValue { $0 = .unavailable("nslcd down") }
        let groups = DirectoryGroups(
            threadPool: pool, ttl: .hours(1), unavailableLifetime: .seconds(2), resolve: directory.resolve)
        let firstAsked = ContinuousClock.now
        #expect(await groups.groups(of: "alice") == .unavailable("nslcd down"))
        #expect(await groups.groups(of: "alice") == .unavailable("nslcd down"), "kept for a moment")
        // Asked again only if this task was starved past the lifetime (the suites run in
        // parallel): the answer was kept from some time after `firstAsked`.
        let lookupsBefore = directory.lookups.withLockedValue { $0 }
        #expect(ContinuousClock.now - firstAsked < .seconds(2) ? lookupsBefore == 1 : (1...2).contains(lookupsBefore))
        directory.answer.withLockedValue { $0 = .member(of: ["staff"]) }
        try await Task.sleep(for: .milliseconds(2200))
        #expect(groups.cached("alice") == nil, "the unavailable answer has expired, though the cache time is an hour")
        #expect(await groups.groups(of: "alice") == .member(of: ["staff"]), "the directory is back")
        directory.answer.withLockedValue { $0 = .noSuchUser }
        #expect(await groups.groups(of: "mallory") == .noSuchUser)
        try await Task.sleep(for: .milliseconds(2200))
        #expect(groups.cached("mallory") == .noSuchUser, "a negative answer is kept for the cache time")
        #expect(directory.lookups.withLockedValue { $0 } == lookupsBefore + 2)
        try await pool.shutdownGracefully()
    }
}
