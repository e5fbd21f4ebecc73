/// The refusals that follow the rules but are still the policy's, decided here in the
/// pure engine so that the gateway only carries out outcomes (docs/architecture.md,
/// "Decisions are made in one place"). The gateway supplies what only it can know
/// (whether the destination is the gateway itself); limits come after, through the
/// ledger (`refused(by:)`).
extension Decision {
    /// A decision that did not come within its deadline (an identd that held it up): every
    /// fact is still recorded, with no rule.
    public static let timedOut = Decision(.deny(.timedOut), rule: nil, trace: [])

    public func checked(_ facts: RequestFacts, destinationIsGateway: Bool) -> Decision {
        guard case .allow(let route) = outcome else { return self }
        // A loop through the gateway is refused unless the allowing rule names the
        // destination itself: with `allow to any`, one client could nest hops for ever.
        if destinationIsGateway, !ruleNamesDestination { return refused(.destinationIsGateway) }
        // SOCKS4 has no UDP: a route without a SOCKS5 parent cannot carry datagrams, and
        // going direct could take a path the operator closed.
        if facts.command == .udp, let route, !route.contains(where: \.scheme.isSOCKS5) { return refused(.notChainable) }
        return self
    }
}
