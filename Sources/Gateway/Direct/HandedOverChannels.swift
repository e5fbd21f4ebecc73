import NIOConcurrencyHelpers
import NIOCore

/// The connections the direct loops handed to SwiftNIO. SwiftNIO's own listeners tell
/// their children when the gateway stops or drains (`ServerQuiescingHelper`); these
/// channels have no listener there, so this does it for them, and tells the driver when
/// the last one has closed: a shutdown's grace period and a takeover's drain wait for an
/// HTTP tunnel, a BIND or a UDP association as they do for a CONNECT relay.
final class HandedOverChannels: Sendable {
    private struct State {
        /// Hand-overs whose channel is being made.
        var reserved = 0
        var channels: [ObjectIdentifier: any Channel] = [:]
        var quiescing = false
        var whenEmpty: (@Sendable () -> Void)?
        /// Hand-overs since the start.
        var total = 0

        var isEmpty: Bool { reserved == 0 && channels.isEmpty }
    }

    private let state = NIOLockedValueBox(State())

    /// A hand-over begins (before its channel exists): counted from now.
    func reserve() {
        state.withLockedValue { state in
            state.reserved += 1
            state.total += 1
        }
    }

    /// How many connections were handed over since the start (what the direct loops did
    /// not carry themselves).
    var total: Int { state.withLockedValue { $0.total } }

    /// The reserved hand-over's channel, or nil if it could not be made.
    func made(_ channel: (any Channel)?) {
        let quiescing = state.withLockedValue { state in
            state.reserved -= 1
            if let channel { state.channels[ObjectIdentifier(channel)] = channel }
            return state.quiescing
        }
        guard let channel else { return emptied() }
        channel.closeFuture.whenComplete { _ in
            self.state.withLockedValue { $0.channels[ObjectIdentifier(channel)] = nil }
            self.emptied()
        }
        if quiescing { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
    }

    /// Tells every channel that the gateway stops accepting (what each does depends on
    /// `GatewayContext.draining`); `whenEmpty` runs once none is left, at once if none is.
    func quiesce(whenEmpty: @escaping @Sendable () -> Void) {
        let channels = state.withLockedValue { state in
            state.quiescing = true
            state.whenEmpty = whenEmpty
            return Array(state.channels.values)
        }
        for channel in channels { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        emptied()
    }

    /// The grace period is over.
    func closeAll() {
        for channel in state.withLockedValue({ Array($0.channels.values) }) { channel.close(promise: nil) }
    }

    private func emptied() {
        let run = state.withLockedValue { state -> (@Sendable () -> Void)? in
            guard state.isEmpty, let whenEmpty = state.whenEmpty else { return nil }
            state.whenEmpty = nil
            return whenEmpty
        }
        run?()
    }
}
