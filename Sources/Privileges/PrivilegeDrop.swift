import CPrivileges

#if canImport(Glibc)
    import Glibc
#endif

/// A failure of the privilege drop, said plainly; the process must not go on.
public struct PrivilegeError: Error, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }

    static func errno(_ what: String) -> PrivilegeError {
        PrivilegeError("\(what): \(String(cString: strerror(Glibc.errno)))")
    }
}

/// The unprivileged identity to run as, looked up before anything is bound.
public struct TargetIdentity: Sendable, CustomStringConvertible {
    public var userName: String
    public var uid: uid_t
    public var gid: gid_t
    public var groupName: String
    /// Supplementary groups: the user's (from /etc/group), or none with `--group`.
    public var supplementaryGroups: [gid_t]

    /// `group`: run with this group and no supplementary groups; nil: the user's primary
    /// group and its supplementary groups.
    public static func lookUp(user: String, group: String?) throws -> TargetIdentity {
        guard let entry = getpwnam(user) else { throw PrivilegeError("unknown user '\(user)' (not in the password database)") }
        let uid = entry.pointee.pw_uid
        var gid = entry.pointee.pw_gid
        guard uid != 0 else { throw PrivilegeError("--user \(user) is root: name an unprivileged user") }
        var supplementary: [gid_t] = []
        if let group {
            guard let groupEntry = getgrnam(group) else { throw PrivilegeError("unknown group '\(group)'") }
            gid = groupEntry.pointee.gr_gid
        } else {
            var count: Int32 = 64
            var groups = [gid_t](repeating: 0, count: Int(count))
            if getgrouplist(user, gid, &groups, &count) < 0 {
                groups = [gid_t](repeating: 0, count: Int(count))
                _ = getgrouplist(user, gid, &groups, &count)
            }
            supplementary = Array(groups.prefix(Int(max(count, 0))))
        }
        guard gid != 0 else { throw PrivilegeError("the group of \(user) is root's (gid 0): name another with --group") }
        let groupName = getgrgid(gid).map { String(cString: $0.pointee.gr_name) } ?? "\(gid)"
        return TargetIdentity(userName: user, uid: uid, gid: gid, groupName: groupName, supplementaryGroups: supplementary)
    }

    public var description: String { "\(userName) (uid \(uid)), group \(groupName) (gid \(gid))" }
}

/// Gives up root for good: groups, gid, uid, every capability set, the bounding and
/// ambient sets, and new privileges through execve. Call it before any other thread
/// exists (capabilities are per thread on Linux), after the listening sockets are bound.
public enum PrivilegeDrop {
    public static func drop(to identity: TargetIdentity) throws -> PrivilegeReport {
        let groups = identity.supplementaryGroups
        guard setgroups(groups.count, groups) == 0 else { throw PrivilegeError.errno("setgroups") }
        // Needs CAP_SETPCAP, so before the uid changes.
        guard identgate_drop_bounding_set() == 0 else { throw PrivilegeError.errno("dropping the capability bounding set") }
        guard setgid(identity.gid) == 0 else { throw PrivilegeError.errno("setgid(\(identity.gid))") }
        guard setuid(identity.uid) == 0 else { throw PrivilegeError.errno("setuid(\(identity.uid))") }
        guard identgate_clear_capability_sets() == 0 else { throw PrivilegeError.errno("clearing the capability sets") }
        guard identgate_clear_ambient_set() == 0 else { throw PrivilegeError.errno("clearing the ambient capabilities") }
        guard identgate_set_no_new_privs() == 0 else { throw PrivilegeError.errno("PR_SET_NO_NEW_PRIVS") }
        return try verify(identity)
    }

    /// Reads back what the kernel says of every thread, and checks that root cannot be
    /// regained.
    public static func verify(_ identity: TargetIdentity) throws -> PrivilegeReport {
        let tasks = try directoryEntries("/proc/self/task")
        guard !tasks.isEmpty else { throw PrivilegeError("no threads under /proc/self/task") }
        var problems: [String] = []
        var main: ProcessStatus?
        for task in tasks {
            let status = try ProcessStatus(path: "/proc/self/task/\(task)/status")
            if task == "\(getpid())" { main = status }
            problems += status.problems(expecting: identity).map { "thread \(task): \($0)" }
        }
        if setuid(0) == 0 || errno != EPERM {
            problems.append("setuid(0) did not fail with EPERM")
        }
        guard problems.isEmpty, let main else {
            throw PrivilegeError("the privilege drop did not hold: " + problems.joined(separator: "; "))
        }
        return PrivilegeReport(identity: identity, status: main, threads: tasks.count)
    }

    static func directoryEntries(_ path: String) throws -> [String] {
        guard let directory = opendir(path) else { throw PrivilegeError.errno("reading \(path)") }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// What was verified, for the start-up log.
public struct PrivilegeReport: Sendable, CustomStringConvertible {
    public var identity: TargetIdentity
    public var status: ProcessStatus
    public var threads: Int

    public var description: String {
        "uid \(status.fields["Uid"] ?? "?"), gid \(status.fields["Gid"] ?? "?"), groups [\(status.fields["Groups"] ?? "")], "
            + "CapEff \(status.fields["CapEff"] ?? "?"), CapPrm \(status.fields["CapPrm"] ?? "?"), "
            + "CapInh \(status.fields["CapInh"] ?? "?"), CapBnd \(status.fields["CapBnd"] ?? "?"), "
            + "CapAmb \(status.fields["CapAmb"] ?? "?"), NoNewPrivs \(status.fields["NoNewPrivs"] ?? "?"); "
            + "\(threads) thread(s) checked"
    }
}

/// The fields of a `/proc/…/status` file.
public struct ProcessStatus: Sendable {
    public var fields: [String: String]

    init(path: String) throws {
        guard let file = fopen(path, "r") else { throw PrivilegeError.errno("reading \(path)") }
        defer { fclose(file) }
        var fields: [String: String] = [:]
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            guard let colon = text.firstIndex(of: ":") else { continue }
            // Tabs separate the values (real, effective, saved, filesystem ids): keep one space.
            fields[String(text[..<colon])] = text[text.index(after: colon)...].split(whereSeparator: \.isWhitespace).joined(
                separator: " ")
        }
        self.fields = fields
    }

    func problems(expecting identity: TargetIdentity) -> [String] {
        var problems: [String] = []
        func ids(_ field: String) -> [String] {
            (fields[field] ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        }
        if Set(ids("Uid")) != ["\(identity.uid)"] { problems.append("Uid is \(fields["Uid"] ?? "?")") }
        if Set(ids("Gid")) != ["\(identity.gid)"] { problems.append("Gid is \(fields["Gid"] ?? "?")") }
        if Set(ids("Groups")) != Set(identity.supplementaryGroups.map { "\($0)" }) {
            problems.append("Groups is \(fields["Groups"] ?? "?")")
        }
        for capability in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"]
        where (fields[capability] ?? "x").contains(where: { $0 != "0" }) {
            problems.append("\(capability) is \(fields[capability] ?? "missing")")
        }
        if fields["NoNewPrivs"] != "1" { problems.append("NoNewPrivs is \(fields["NoNewPrivs"] ?? "missing")") }
        return problems
    }
}
