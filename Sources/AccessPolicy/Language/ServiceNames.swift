/// Port names a policy may use instead of numbers. A fixed table rather than
/// /etc/services, so that a policy means the same on every machine.
enum ServiceNames {
    static let ports: [String: UInt16] = [
        "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "dns": 53, "domain": 53, "http": 80, "pop3": 110,
        "ntp": 123, "imap": 143, "ldap": 389, "https": 443, "smtps": 465, "submission": 587, "ldaps": 636,
        "imaps": 993, "pop3s": 995, "mssql": 1433, "mysql": 3306, "rdp": 3389, "postgresql": 5432,
        "xmpp": 5222, "http-alt": 8080,
    ]

    static func port(_ name: String) -> UInt16? { ports[name] }
}
