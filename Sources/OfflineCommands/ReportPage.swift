import AuditLog
import Foundation
import PrintableText

/// The HTML of `audit report`: one self-contained page (inline CSS and SVG, no script,
/// nothing fetched), charts first and the same numbers in tables below. Every text from
/// the log is escaped twice over: control characters shown as `\x..` (DisplayText),
/// then HTML's five special characters.
struct ReportPage {
    var tally: ReportTally
    var files: [String]
    /// The chain's verdict, one line per instance ("intact", "broken at …").
    var verification: [(instance: String, text: String, intact: Bool)]
    var filters: String
    var top = 10

    static func html(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in DisplayText.escaped(text) {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    func render() -> String {
        var page = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>identgate audit report</title>
            <style>\(Self.style)</style></head><body>
            <h1>identgate audit report</h1>
            <p class="meta">\(Self.html(files.joined(separator: ", "))) · \(Self.html(tally.first ?? "-")) to \(Self.html(tally.last ?? "-"))\(filters.isEmpty ? "" : " · filters: " + Self.html(filters))</p>

            """
        page += "<section id=\"chain\" class=\"\(verification.allSatisfy(\.intact) ? "intact" : "broken")\"><h2>Hash chain</h2><ul>"
        for item in verification {
            page += "<li>\(item.instance.isEmpty ? "" : "<b>\(Self.html(item.instance))</b>: ")\(Self.html(item.text))</li>"
        }
        page += "</ul></section>\n"
        let denied = tally.decisions - tally.allowed
        page += """
            <section id="totals"><h2>Totals</h2><table class="totals">
            <tr><th>records</th><td id="total-records">\(tally.records)</td></tr>
            <tr><th>decisions</th><td id="total-decisions">\(tally.decisions)</td></tr>
            <tr><th>allowed</th><td id="total-allowed">\(tally.allowed)</td></tr>
            <tr><th>denied</th><td id="total-denied">\(denied)</td></tr>
            <tr><th>bytes from clients</th><td id="total-bytes-up">\(tally.bytesUp)</td></tr>
            <tr><th>bytes to clients</th><td id="total-bytes-down">\(tally.bytesDown)</td></tr>
            <tr><th>gaps in the log</th><td id="total-gaps">\(tally.gaps.count)</td></tr>
            </table></section>

            """
        let series = tally.buckets.sorted { $0.key < $1.key }
        page += section(
            "timeline", "Requests and denials over time (per \(tally.byHour ? "hour" : "minute"); gaps in the log in red)",
            Self.timeChart(
                id: "chart-timeline", series.map { ($0.key, $0.value.requests, $0.value.denials) }, first: "requests",
                second: "denials", marks: tally.gaps.map { String($0.prefix(tally.byHour ? 13 : 16)) }))
        page += section(
            "denials", "Denials by rule and reply (SOCKS4 92: identd unreachable, 93: user-ids differ)",
            Self.barChart(id: "chart-denials", tally.denials.top(top), approximate: tally.denials.approximate))
        page += "<div class=\"grid\">"
        page += section("users", "Top users by requests", Self.barChart(id: "chart-users", tally.users.top(top), approximate: tally.users.approximate))
        page += section("user-bytes", "Top users by bytes", Self.barChart(id: "chart-user-bytes", tally.userBytes.top(top), approximate: tally.userBytes.approximate))
        page += section("clients", "Top clients by requests", Self.barChart(id: "chart-clients", tally.clients.top(top), approximate: tally.clients.approximate))
        page += section("client-bytes", "Top clients by bytes", Self.barChart(id: "chart-client-bytes", tally.clientBytes.top(top), approximate: tally.clientBytes.approximate))
        page += section("destinations", "Top destinations by requests", Self.barChart(id: "chart-destinations", tally.destinations.top(top), approximate: tally.destinations.approximate))
        page += section("destination-bytes", "Top destinations by bytes", Self.barChart(id: "chart-destination-bytes", tally.destinationBytes.top(top), approximate: tally.destinationBytes.approximate))
        page += "</div>"
        page += section(
            "ident", "Ident lookups over time (user-id answered, and failed)",
            Self.timeChart(
                id: "chart-ident", series.map { ($0.key, $0.value.identUserIDs, $0.value.identFailures) }, first: "user-id",
                second: "failed", marks: []))
        page += section(
            "durations", "Session durations",
            Self.barChart(id: "chart-durations", Array(zip(ReportTally.durationBands, tally.durations)).map { ($0.0, $0.1) }, approximate: false, sorted: false))
        page += "<h2>Tables</h2>"
        page += table("Denials by rule and reply", tally.denials.top(top))
        page += table("Requests by protocol", tally.protocols.top(top))
        page += table("Ident outcomes", tally.identOutcomes.top(top))
        page += table("Top users by requests", tally.users.top(top))
        page += table("Top clients by requests", tally.clients.top(top))
        page += table("Top destinations by requests", tally.destinations.top(top))
        page += table("Top users by bytes", tally.userBytes.top(top))
        page += table("Requests per \(tally.byHour ? "hour" : "minute")", series.map { ($0.key, $0.value.requests) })
        if !tally.gaps.isEmpty { page += table("Gaps in the log", tally.gaps.map { ($0, 1) }) }
        page += "<p class=\"meta\">Made by identgate audit report. Top lists past \(TopCounter.capacity) distinct keys are approximate (marked ≈).</p></body></html>\n"
        return page
    }

    private func section(_ id: String, _ title: String, _ body: String) -> String {
        "<section id=\"\(id)\"><h2>\(Self.html(title))</h2>\(body)</section>\n"
    }

    private func table(_ title: String, _ rows: [(key: String, value: Int)]) -> String {
        var out = "<table class=\"data\"><caption>\(Self.html(title))</caption>"
        for row in rows { out += "<tr><td>\(Self.html(row.key))</td><td class=\"n\">\(row.value)</td></tr>" }
        if rows.isEmpty { out += "<tr><td>(none)</td><td></td></tr>" }
        return out + "</table>\n"
    }

    /// Horizontal bars, one per item, largest first (unless `sorted` is false).
    static func barChart(id: String, _ items: [(key: String, value: Int)], approximate: Bool, sorted: Bool = true) -> String {
        guard !items.isEmpty else { return "<p class=\"empty\">(none)</p>" }
        let rowHeight = 22, labelWidth = 260, barWidth = 300
        let maximum = max(1, items.map(\.value).max() ?? 1)
        var svg = "<svg id=\"\(id)\" class=\"chart\" role=\"img\" width=\"\(labelWidth + barWidth + 80)\" height=\"\(items.count * rowHeight + 4)\">"
        for (index, item) in items.enumerated() {
            let y = index * rowHeight + 2
            let width = max(1, item.value * barWidth / maximum)
            let label = item.key.count > 40 ? String(item.key.prefix(39)) + "…" : item.key
            svg += "<text x=\"\(labelWidth - 6)\" y=\"\(y + 15)\" text-anchor=\"end\">\(html(label))</text>"
            svg += "<rect class=\"bar\" x=\"\(labelWidth)\" y=\"\(y)\" width=\"\(width)\" height=\"\(rowHeight - 6)\"><title>\(html(item.key)): \(item.value)</title></rect>"
            svg += "<text x=\"\(labelWidth + width + 4)\" y=\"\(y + 15)\">\(approximate ? "≈" : "")\(item.value)</text>"
        }
        return svg + "</svg>"
    }

    /// Vertical bars over time: `first` in full, `second` (a part of it, or another
    /// count) over it; `marks` are buckets drawn as red lines (log gaps).
    static func timeChart(id: String, _ series: [(key: String, first: Int, second: Int)], first: String, second: String, marks: [String]) -> String {
        guard !series.isEmpty else { return "<p class=\"empty\">(none)</p>" }
        let height = 160, width = 860
        let step = max(1.0, Double(width) / Double(series.count))
        let maximum = max(1, series.map { max($0.first, $0.second) }.max() ?? 1)
        let marked = Set(marks)
        var svg = "<svg id=\"\(id)\" class=\"chart\" role=\"img\" width=\"\(width + 60)\" height=\"\(height + 40)\">"
        for (index, point) in series.enumerated() {
            let x = 50 + Double(index) * step
            let a = point.first * height / maximum, b = point.second * height / maximum
            let barWidth = String(format: "%.1f", max(1, step - 1))
            svg += "<rect class=\"bar first\" x=\"\(String(format: "%.1f", x))\" y=\"\(height - a + 10)\" width=\"\(barWidth)\" height=\"\(a)\"><title>\(html(point.key)): \(first) \(point.first), \(second) \(point.second)</title></rect>"
            if b > 0 {
                svg += "<rect class=\"second\" x=\"\(String(format: "%.1f", x))\" y=\"\(height - b + 10)\" width=\"\(barWidth)\" height=\"\(b)\"/>"
            }
            if marked.contains(point.key) {
                svg += "<line class=\"gap\" x1=\"\(String(format: "%.1f", x))\" x2=\"\(String(format: "%.1f", x))\" y1=\"5\" y2=\"\(height + 10)\"/>"
            }
        }
        svg += "<text x=\"0\" y=\"18\">\(maximum)</text><text x=\"0\" y=\"\(height + 10)\">0</text>"
        svg += "<text x=\"50\" y=\"\(height + 30)\">\(html(series.first?.key ?? ""))</text>"
        svg += "<text x=\"\(width + 50)\" y=\"\(height + 30)\" text-anchor=\"end\">\(html(series.last?.key ?? ""))</text>"
        svg += "<rect class=\"first\" x=\"320\" y=\"\(height + 20)\" width=\"10\" height=\"10\"/><text x=\"334\" y=\"\(height + 30)\">\(first)</text>"
        svg += "<rect class=\"second\" x=\"420\" y=\"\(height + 20)\" width=\"10\" height=\"10\"/><text x=\"434\" y=\"\(height + 30)\">\(second)</text>"
        return svg + "</svg>"
    }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222}
        h1{font-size:22px}h2{font-size:16px;margin:22px 0 8px}
        .meta{color:#666}
        #chain.intact{border-left:6px solid #2a8a2a;padding-left:10px}
        #chain.broken{border-left:6px solid #c22;padding-left:10px;background:#fee}
        .grid{display:grid;grid-template-columns:1fr;gap:4px}
        svg.chart text{font-size:12px;fill:#333}
        rect.bar,rect.first{fill:#4a78b5}rect.second{fill:#d9534f}
        line.gap{stroke:#c00;stroke-width:2}
        table{border-collapse:collapse;margin:8px 0 16px}
        td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
        td.n,.totals td{text-align:right;font-variant-numeric:tabular-nums}
        caption{text-align:left;font-weight:600;padding:4px 0}
        @media print{section{break-inside:avoid}}
        """
}
