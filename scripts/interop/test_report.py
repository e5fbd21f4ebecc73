"""`identgate audit report` checked in a real browser: headless Chromium (Debian's) opens
the report made from a generated log with known counts; the rendered DOM must show the
totals and a chart with the right number of bars, a screenshot must not be blank, and
names a client chose (markup, control characters) must render as text, never as markup."""

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import unittest
import zlib

from peers import BINARY

HOSTILE_USER = "<script>document.title='pwned'</script>\x1b[31m"


def chained_log(path, decisions, gap_after=None, seed=7, users=None):
    """A hash-chained log of `decisions` decisions (every 5th denied, every 7th a SOCKS4
    93) and a session end for each allowed one; returns the counts it holds."""
    rng = random.Random(seed)
    lines = []
    previous = hashlib.sha256(b"seed").hexdigest()

    def add(record):
        nonlocal previous
        record.update({"v": 1, "seq": len(lines), "prev": previous})
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        lines.append(line)
        previous = hashlib.sha256(line).hexdigest()

    add({"event": "chain-start", "seed": previous, "time": "2026-12-01T08:00:00.000Z"})
    add({"event": "gateway-start", "time": "2026-12-01T08:00:00.001Z", "version": "0.1.0", "listen": ["10.0.0.1:1080"],
         "policyFile": "egress.policy", "policySHA256": "0" * 64})
    counts = {"decisions": 0, "allowed": 0, "denied": 0, "93": 0, "users": {}}
    custom = users is not None
    users = users or ["alice", "bob", "carol", "dave", HOSTILE_USER]
    for index in range(decisions):
        minute = index * 180 // max(1, decisions) if not custom else min(179, int(180 * (index / decisions) ** 0.8))
        time = f"2026-12-01T{8 + minute // 60:02d}:{minute % 60:02d}:{index % 60:02d}.000Z"
        # The test's own users in turn (known counts); a given list Zipf-like (the
        # screenshot in docs/ wants real-looking data).
        user = users[index % len(users)] if not custom else rng.choices(users, weights=[1 / (i + 1) for i in range(len(users))])[0]
        counts["users"][user] = counts["users"].get(user, 0) + 1
        record = {"event": "decision", "time": time, "session": index + 1, "client": f"10.1.{index % 7}.{index % 11 + 2}:4{index % 1000:03d}",
                  "listener": "10.0.0.1:1080", "socks": "socks5", "command": "connect",
                  "destination": rng.choice(["www.example.com", "mirror.example.org", "10.9.0.5"]),
                  "destinationPort": 443, "auth": "none", "authOutcome": "none", "claimedUser": user}
        if index % 7 == 0:
            record.update({"socks": "socks4", "verdict": "deny", "reply": 93, "ruleLine": 4, "ruleLabel": "verified",
                           "ident": {"outcome": "user-id", "userID": "mallory"}})
            counts["93"] += 1
            counts["denied"] += 1
        elif index % 5 == 0:
            record.update({"verdict": "deny", "reply": 2, "ruleLine": 9, "ruleLabel": "blocked"})
            counts["denied"] += 1
        else:
            record.update({"verdict": "allow", "reply": 0, "ruleLine": 3, "ruleLabel": "staff"})
            counts["allowed"] += 1
        counts["decisions"] += 1
        add(record)
        if record["verdict"] == "allow":
            add({"event": "session-end", "time": time, "session": index + 1, "bytesFromClient": 100,
                 "bytesToClient": 1000, "durationMs": 10 ** (index % 5), "reason": "closed"})
        if gap_after is not None and index == gap_after:
            add({"event": "audit-gap", "time": time, "reason": "disk full"})
    with open(path, "wb") as out:
        out.write(b"\n".join(lines) + b"\n")
    return counts


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    return None


def png_is_blank(path):
    """True if the PNG's pixels are nearly all one value (decoded with zlib: the
    scanlines' filter bytes aside, a blank page is one repeated byte)."""
    with open(path, "rb") as png:
        data = png.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, offset = b"", 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8]
        if kind == b"IDAT":
            chunks += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    pixels = zlib.decompress(chunks)
    common = max(set(pixels[:200000]), key=pixels[:200000].count)
    return pixels.count(common) > 0.995 * len(pixels)


@unittest.skipUnless(chromium(), "needs chromium (scripts/test installs it)")
class ReportInBrowserTest(unittest.TestCase):
    maxDiff = 2000
    longMessage = False

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="identgate-report-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(shutil.rmtree, self.folder, True)

    def browse(self, page, *arguments):
        profile = os.path.join(self.folder, "profile")
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             *arguments, f"file://{page}"], capture_output=True, timeout=120)

    def test_totals_charts_escaping_and_a_screenshot(self):
        log = os.path.join(self.folder, "audit.jsonl")
        counts = chained_log(log, 700, gap_after=350)
        page = os.path.join(self.folder, "report.html")
        made = subprocess.run([BINARY, "audit", "report", log, "--html", page], capture_output=True, text=True, timeout=120)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn("chain intact", made.stdout)
        with open(page) as html:
            source = html.read()
        self.assertNotIn("http://", source.replace("http://www.w3.org", ""), "nothing is fetched")
        self.assertNotIn("<script", source, "no script, and the hostile name is escaped")

        dom = self.browse(page, "--dump-dom").stdout.decode()
        def cell(name):
            return int(dom.split(f'id="{name}">')[1].split("<")[0])
        self.assertEqual(cell("total-decisions"), counts["decisions"])
        self.assertEqual(cell("total-allowed"), counts["allowed"])
        self.assertEqual(cell("total-denied"), counts["denied"])
        self.assertEqual(cell("total-gaps"), 1)
        self.assertEqual(cell("total-bytes-down"), counts["allowed"] * 1000)
        # The denials chart: one bar per rule and reply (93 apart from 2).
        denials = dom.split('id="chart-denials"')[1].split("</svg>")[0]
        self.assertEqual(denials.count('class="bar"'), 2)
        self.assertIn("reply 93", denials)
        # The users chart: five users, the hostile one as text.
        users = dom.split('id="chart-users"')[1].split("</svg>")[0]
        self.assertEqual(users.count('class="bar"'), 5)
        self.assertIn("&lt;script&gt;", dom)
        self.assertNotIn("<script>document", dom)
        self.assertIn("\\u{1B}[31m", dom, "the control character shown, not sent")
        self.assertNotIn("\x1b", dom)
        self.assertIn("<title>identgate audit report</title>", dom, "the title was not rewritten")

        shot = os.path.join(self.folder, "report.png")
        self.browse(page, f"--screenshot={shot}", "--window-size=1100,1800", "--hide-scrollbars")
        self.assertTrue(os.path.exists(shot))
        self.assertFalse(png_is_blank(shot))

    def test_a_broken_chain_is_said_at_the_top(self):
        log = os.path.join(self.folder, "audit.jsonl")
        chained_log(log, 50)
        with open(log, "rb") as file:
            lines = file.read().splitlines()
        lines[20] = lines[20].replace(b"10.1.", b"10.7.")
        with open(log, "wb") as file:
            file.write(b"\n".join(lines) + b"\n")
        page = os.path.join(self.folder, "report.html")
        made = subprocess.run([BINARY, "audit", "report", log, "--html", page], capture_output=True, text=True, timeout=120)
        self.assertIn("chain BROKEN", made.stdout)
        dom = self.browse(page, "--dump-dom").stdout.decode()
        self.assertIn('id="chain" class="broken"', dom)
        self.assertIn("audit.jsonl:22: broken link", dom)
