import AccessPolicy
import NetAddress
import Testing

@testable import PolicyDiff

func compiled(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> Policy {
    let compilation = PolicyCompiler.compile(text, file: "test.policy")
    #expect(compilation.errors.isEmpty, "\(compilation.errors)\n\(text)", sourceLocation: sourceLocation)
    return compilation.policy ?? Policy(rules: [])
}

@Suite struct IntervalSetTests {
    @Test func unionIntersectionAndDifference() {
        let a = IntervalSet(union: [10...20, 30...40, 21...22])
        #expect(a.ranges == [10...22, 30...40], "adjacent ranges merge")
        let b = IntervalSet(union: [15...35])
        #expect(a.intersection(b).ranges == [15...22, 30...35])
        #expect(a.subtracting(b).ranges == [10...14, 36...40])
        #expect(b.subtracting(a).ranges == [23...29])
        #expect(a.union(b).ranges == [10...40])
        #expect(IntervalSet(0...UInt128.max).subtracting(IntervalSet(0...UInt128.max)).isEmpty)
        #expect(IntervalSet(union: [5...UInt128.max, 0...4]).ranges == [0...UInt128.max])
        #expect(a.isSubset(of: IntervalSet(0...100)))
        #expect(a.isDisjoint(with: IntervalSet(23...29)))
    }

    @Test func addressesReadAsTheFewestBlocks() {
        #expect(RegionText.cidrs(IntervalSet(networks: [IPNetwork("10.0.0.0/8")!, IPNetwork("11.0.0.0/8")!])) == ["10.0.0.0/7"])
        #expect(RegionText.addresses(IntervalSet(0...UInt128.max).subtracting(IntervalSet(networks: [IPNetwork("10.0.0.0/8")!])))
            == "any but 10.0.0.0/8")
        #expect(RegionText.cidrs(IntervalSet(networks: [IPNetwork("2001:db8::/32")!])) == ["2001:db8::/32"])
        #expect(RegionText.iso(Example.mondayMidnight + 9 * 3600 + 30 * 60) == "2024-01-01T09:30")
    }
}

@Suite struct PolicyDiffTests {
    @Test func thePolicyAgainstItselfAndAgainstItsLinesMovedIsTheSame() async throws {
        let text = """
            net inside = 10.0.0.0/8
            deny to 169.254.169.254 label "metadata"
            allow from @inside port 80, 443 label "web"
            allow from 10.1.0.0/16 user alice, bob auth password label "admins"
            """
        let diff = try await PolicyDiff(old: compiled(text), new: compiled("# moved down a line\n\n" + text))
        #expect(diff.differences.isEmpty)
        #expect(diff.settingChanges.isEmpty)
    }

    @Test func aWiderPortListIsOneRegion() async throws {
        let diff = try await PolicyDiff(
            old: compiled("allow from 10.0.0.0/8 port 80 label \"web\""),
            new: compiled("allow from 10.0.0.0/8 port 80, 443 label \"web\""))
        #expect(diff.differences.count == 1)
        let difference = try #require(diff.differences.first)
        #expect(difference.regionLine == "from 10.0.0.0/8 :443")
        #expect(difference.old.outcome.verdict == .deny && difference.old.rule == nil)
        #expect(difference.new.outcome.verdict == .allow && difference.new.rule?.label == "web")
        #expect(difference.newExample.prefix(4) == ["--from", "10.0.0.1", "--to", "192.0.2.1:443"])
    }

    @Test func identAndGroupsAndTimesAreComparedToo() async throws {
        let diff = try await PolicyDiff(
            old: compiled("ident from 10.0.0.0/8 timeout 5s\nallow from 10.0.0.0/8 ident\nallow group staff time mon-fri 08:00-18:00"),
            new: compiled("ident from 10.0.0.0/8 timeout 5s\nallow from 10.0.0.0/8\nallow group staff, admins time mon-fri 08:00-18:00"))
        let lines = diff.differences.map(\.regionLine)
        #expect(lines.contains { $0.contains("identd") }, "\(lines)")
        #expect(lines.contains { $0.contains("admins") }, "\(lines)")
    }

    @Test func settingsTheRulesDoNotShowAreReported() async throws {
        let diff = try await PolicyDiff(
            old: compiled("ident from 10.0.0.0/8 timeout 5s\nallow from 10.0.0.0/8"),
            new: compiled("ident from 10.0.0.0/8 timeout 2s\ngssapi require integrity\nallow from 10.0.0.0/8"))
        #expect(diff.differences.isEmpty, "no request's verdict changes")
        #expect(diff.settingChanges.count == 2, "\(diff.settingChanges)")
        #expect(diff.settingChanges.contains { $0.hasPrefix("gssapi require: none → integrity") })
        #expect(diff.settingChanges.contains { $0.contains("5.0s") && $0.contains("2.0s") })
    }

    @Test func aReorderedDenyIsFound() async throws {
        let diff = try await PolicyDiff(
            old: compiled("deny port 22 label \"no ssh\"\nallow from 10.20.0.0/16 label \"lab\""),
            new: compiled("allow from 10.20.0.0/16 label \"lab\"\ndeny port 22 label \"no ssh\""))
        #expect(diff.differences.map(\.regionLine) == ["from 10.20.0.0/16 :22"])
        #expect(diff.differences.first?.old.rule?.label == "no ssh")
        #expect(diff.differences.first?.new.rule?.label == "lab")
    }
}

@Suite struct RegionTests {
    @Test func subtractingLeavesDisjointBoxesThatCoverTheRest() {
        let space = RequestSpace([compiled("allow port 80")])
        var box = space.everything
        box[.port] = IntervalSet(0...100)
        var other = space.everything
        other[.port] = IntervalSet(50...200)
        other[.command] = IntervalSet(values: [0])
        let pieces = box.subtracting(other)
        for port: UInt128 in [10, 60, 150] {
            for command in 0..<3 {
                var point = space.everything.sets.map { $0.first ?? 0 }
                point[Dimension.port.rawValue] = port
                point[Dimension.command.rawValue] = UInt128(command)
                let inBox = box.contains(point)
                let inOther = other.contains(point)
                #expect(pieces.filter { $0.contains(point) }.count == (inBox && !inOther ? 1 : 0), "port \(port) command \(command)")
            }
        }
    }
}
