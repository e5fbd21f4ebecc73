import AuditLog
import Foundation

/// Counts for `audit report`, taken from a stream of records in bounded memory: every
/// table is capped (`TopCounter`), the time series keep one entry per minute and fold to
/// hours past `ReportTally.minuteBuckets`, and sessions waiting for their end are capped.
struct ReportTally {
    static let minuteBuckets = 1440

    struct Bucket {
        var requests = 0
        var denials = 0
        var identFailures = 0
        var identUserIDs = 0
    }

    var records = 0
    var decisions = 0
    var allowed = 0
    var bytesUp: UInt64 = 0
    var bytesDown: UInt64 = 0
    var first: String?
    var last: String?
    /// "YYYY-MM-DDTHH:MM" (or "YYYY-MM-DDTHH" once folded) -> counts.
    var buckets: [String: Bucket] = [:]
    var byHour = false
    /// When the log says it could not be written (audit-gap records).
    var gaps: [String] = []
    var denials = TopCounter()
    var users = TopCounter()
    var clients = TopCounter()
    var destinations = TopCounter()
    var userBytes = TopCounter()
    var clientBytes = TopCounter()
    var destinationBytes = TopCounter()
    var identOutcomes = TopCounter()
    /// Requests by the client's protocol and command (`socks5 connect`, `http connect`).
    var protocols = TopCounter()
    /// Session durations: counts per power-of-ten band of milliseconds (<1 ms … ≥ 1 h).
    var durations = [Int](repeating: 0, count: ReportTally.durationBands.count)
    static let durationBands = ["< 10 ms", "10-100 ms", "0.1-1 s", "1-10 s", "10-100 s", "100 s-1 h", "≥ 1 h"]

    /// Decided sessions whose end has not come yet: who and where, for their bytes.
    private var open: [SessionKey: (user: String, client: String, destination: String)] = [:]
    private var runs: [String?: Int] = [:]
    static let openSessionLimit = 100_000
    private(set) var sessionsDropped = 0

    mutating func add(_ record: AuditRecord, matches: Bool) {
        records += 1
        if first == nil { first = record.time }
        last = record.time
        switch record.event {
        case .gatewayStart:
            runs[record.instance, default: 0] += 1
        case .auditGap:
            gaps.append(record.time)
        case .decision where matches:
            addDecision(record)
        case .sessionEnd:
            guard let session = record.session,
                let who = open.removeValue(forKey: key(record, session))
            else { return }
            let moved = (record.bytesFromClient ?? 0) + (record.bytesToClient ?? 0)
            bytesUp += record.bytesFromClient ?? 0
            bytesDown += record.bytesToClient ?? 0
            userBytes.add(who.user, Int(clamping: moved))
            clientBytes.add(who.client, Int(clamping: moved))
            destinationBytes.add(who.destination, Int(clamping: moved))
            if let duration = record.durationMs {
                let band = duration <= 0 ? 0 : min(Self.durationBands.count - 1, max(0, Int(log10(Double(duration)))))
                durations[band] += 1
            }
        default:
            break
        }
    }

    private func key(_ record: AuditRecord, _ session: UInt64) -> SessionKey {
        SessionKey(instance: record.instance, run: runs[record.instance] ?? 0, session: session)
    }

    private mutating func addDecision(_ record: AuditRecord) {
        decisions += 1
        let user = record.claimedUser ?? record.ident?.userID ?? "(none)"
        let client = record.client.map { $0.split(separator: ":").dropLast().joined(separator: ":") } ?? "?"
        let host = client.hasPrefix("[") ? String(client.dropFirst().dropLast()) : client
        let destination = "\(record.destination ?? "?"):\(record.destinationPort ?? 0)"
        users.add(user)
        clients.add(host)
        destinations.add(destination)
        protocols.add("\(record.socks ?? "?") \(record.command ?? "?")")
        var bucket = buckets[bucketKey(record.time), default: Bucket()]
        bucket.requests += 1
        if let ident = record.ident {
            identOutcomes.add(ident.outcome)
            if ident.outcome == "user-id" { bucket.identUserIDs += 1 } else { bucket.identFailures += 1 }
        }
        if record.verdict == "allow" {
            allowed += 1
            if let session = record.session, record.reason == nil {
                if open.count < Self.openSessionLimit {
                    open[key(record, session)] = (user, host, destination)
                } else {
                    sessionsDropped += 1
                }
            }
        } else {
            bucket.denials += 1
            denials.add("\(record.decidedBy) — reply \(record.reply.map(String.init) ?? "?")")
        }
        buckets[bucketKey(record.time)] = bucket
        if !byHour, buckets.count > Self.minuteBuckets { foldToHours() }
    }

    private func bucketKey(_ time: String) -> String {
        String(time.prefix(byHour ? 13 : 16))
    }

    private mutating func foldToHours() {
        byHour = true
        var hours: [String: Bucket] = [:]
        for (minute, counts) in buckets {
            var hour = hours[String(minute.prefix(13)), default: Bucket()]
            hour.requests += counts.requests
            hour.denials += counts.denials
            hour.identFailures += counts.identFailures
            hour.identUserIDs += counts.identUserIDs
            hours[String(minute.prefix(13))] = hour
        }
        buckets = hours
    }
}

/// Counts per key with at most `capacity` keys kept: past it, the keys with the smallest
/// counts are dropped (in a batch, down to `capacity / 2`), so the largest are kept,
/// approximately: `approximate` says when that happened.
struct TopCounter {
    static let capacity = 20_000
    private(set) var counts: [String: Int] = [:]
    private(set) var approximate = false

    mutating func add(_ key: String, _ amount: Int = 1) {
        counts[key, default: 0] += amount
        if counts.count > Self.capacity {
            approximate = true
            let keep = counts.sorted { $0.value > $1.value }.prefix(Self.capacity / 2)
            counts = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }

    func top(_ count: Int) -> [(key: String, value: Int)] {
        counts.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.prefix(count).map { ($0.key, $0.value) }
    }
}
