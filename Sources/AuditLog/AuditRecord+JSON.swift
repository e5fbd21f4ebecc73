import PrintableText
/// A hand-written JSON encoder for audit records: the writer encodes every record, and
/// Foundation's JSONEncoder costs several times more per record. Keys are written in
/// sorted order, absent optionals left out, strings escaped as RFC 8259 requires.
/// `JSONDecoder` reads the result; a test checks the two agree.
extension AuditRecord {
    func writeJSON(to out: inout [UInt8]) {
        // The writer takes the caller's buffer (not a copy of it) and gives it back.
        var writer = JSONObjectWriter()
        swap(&writer.out, &out)
        writer.openObject()
        writer.field("auth", auth)
        writer.field("authOutcome", authOutcome)
        writer.field("balancer", balancer)
        writer.field("bytesFromClient", bytesFromClient)
        writer.field("bytesToClient", bytesToClient)
        writer.field("claimedUser", claimedUser)
        writer.field("client", client)
        writer.field("command", command)
        writer.field("destination", destination)
        writer.field("destinationPort", destinationPort.map(UInt64.init))
        writer.field("durationMs", durationMs.map(Int64.init))
        writer.field("event", event.rawValue)
        writer.field("groups", groups)
        writer.field("groupsNote", groupsNote)
        writer.field("groupsUser", groupsUser)
        writer.field("gssMechanism", gssMechanism)
        writer.field("httpMethod", httpMethod)
        writer.field("httpTarget", httpTarget)
        if let ident {
            writer.key("ident")
            writer.openObject()
            writer.field("detail", ident.detail)
            writer.field("durationMs", ident.durationMs.map(Int64.init))
            writer.field("opsys", ident.opsys)
            writer.field("outcome", ident.outcome)
            writer.field("raw", ident.raw)
            writer.field("userID", ident.userID)
            writer.closeObject()
        }
        writer.field("instance", instance)
        writer.field("keyID", keyID)
        writer.field("limitLabel", limitLabel)
        writer.field("limitLine", limitLine.map(Int64.init))
        writer.field("listen", listen)
        writer.field("listener", listener)
        writer.field("parent", parent)
        writer.field("passwordSource", passwordSource)
        writer.field("policyFile", policyFile)
        writer.field("policySHA256", policySHA256)
        writer.field("prev", prev)
        writer.field("protection", protection)
        writer.field("previousFile", previousFile)
        writer.field("reason", reason)
        writer.field("reply", reply.map(Int64.init))
        writer.field("requestTime", requestTime)
        writer.field("resolved", resolved)
        writer.field("ruleLabel", ruleLabel)
        writer.field("ruleLine", ruleLine.map(Int64.init))
        writer.field("route", route)
        writer.field("rules", rules.map(Int64.init))
        writer.field("seed", seed)
        writer.field("seq", seq)
        writer.field("session", session)
        writer.field("signature", signature)
        writer.field("socks", socks)
        writer.field("tests", tests.map(Int64.init))
        writer.field("time", time)
        writer.field("user", user)
        writer.field("v", Int64(v))
        writer.field("verdict", verdict)
        writer.field("verified", verified)
        writer.field("version", version)
        writer.closeObject()
        swap(&writer.out, &out)
    }
}

private struct JSONObjectWriter {
    var out: [UInt8] = []
    /// No field written yet in the object being written (no comma before the next key).
    private var first = true

    mutating func openObject() {
        out.append(UInt8(ascii: "{"))
        first = true
    }

    mutating func closeObject() {
        out.append(UInt8(ascii: "}"))
        first = false
    }

    mutating func key(_ name: String) {
        if !first { out.append(UInt8(ascii: ",")) }
        first = false
        string(name)
        out.append(UInt8(ascii: ":"))
    }

    mutating func field(_ name: String, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    mutating func field(_ name: String, _ value: UInt64?) {
        guard let value else { return }
        key(name)
        out.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: String, _ value: Int64?) {
        guard let value else { return }
        key(name)
        out.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: String, _ values: [String]?) {
        guard let values else { return }
        key(name)
        out.append(UInt8(ascii: "["))
        for (index, value) in values.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            string(value)
        }
        out.append(UInt8(ascii: "]"))
    }

    mutating func string(_ value: String) {
        JSONText.appendQuoted(value, to: &out)
    }
}
