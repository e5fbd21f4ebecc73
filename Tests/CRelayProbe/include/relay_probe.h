#ifndef RELAY_PROBE_H
#define RELAY_PROBE_H

#include <stdint.h>

// A SOCKS5 client and an echo server on 127.0.0.1 written with blocking system calls
// only: they allocate nothing, so a process that counts its allocations counts only
// the gateway's. Used by the allocation guard (Tests/AllocationGuard).

// Starts an echo server on 127.0.0.1 (ephemeral port, written to *port) on a thread of
// its own; it serves one connection at a time until relay_probe_echo_stop.
// Returns 0, or -1 with errno set.
int relay_probe_echo_start(uint16_t *port);

// Stops the echo server and joins its thread.
void relay_probe_echo_stop(void);

// Makes `count` connections one after another through the SOCKS5 proxy on
// 127.0.0.1:proxy_port to 127.0.0.1:echo_port: greeting, CONNECT, 64 bytes out and the
// same 64 bytes back, close. Every read has a 5 s time-out. Returns how many
// completed; on the first failure it stops and writes what failed to `failure`.
int relay_probe_socks5_round_trips(uint16_t proxy_port, uint16_t echo_port, int count, const char **failure);

// Allocates and frees one block, where no optimizer can remove it: a guard calls it to
// prove that allocations are being counted at all.
void relay_probe_allocate_once(void);

#endif
