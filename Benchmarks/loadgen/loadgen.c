// A small, single-process, event-driven load generator for scripts/bench.
//
//   loadgen echo PORT                      a 127.0.0.1 TCP echo server (runs until killed)
//   loadgen sink PORT                      a 127.0.0.1 TCP server that discards what it reads
//   loadgen source PORT                    a 127.0.0.1 TCP server that reads an 8-byte count
//        (big-endian) and sends that many bytes, then closes; one connection at a time
//   loadgen download MODE PROXY_PORT DEST_PORT MEBIBYTES SECONDS
//        one stream from the source through the proxy: asks for MEBIBYTES and reads
//        until the close (or SECONDS); prints bytes received, 0, seconds, MB/s.
//   loadgen reply PORT                     a 127.0.0.1 TCP server that echoes the first read
//        and closes, like an HTTP/1.0 server: the destination closes first, so the
//        TIME_WAIT is on its side. (With the client or the proxy closing first, the
//        connection rate tests leave tens of thousands of TIME_WAIT sockets on ephemeral
//        ports, and a proxy that binds its outgoing sockets before connecting, as Dante
//        does, then fails with EADDRINUSE: measured here, it ruined Dante's later rows.)
//   loadgen bulk MODE PROXY_PORT DEST_PORT MEBIBYTES SECONDS
//        one stream through the proxy to the sink: writes MEBIBYTES (or for SECONDS),
//        shuts down its sending side and waits for the close; prints bytes sent, 0,
//        seconds, MB/s.
//   Addresses: 127.0.0.1 unless LOADGEN_PROXY_HOST (the proxy), LOADGEN_DEST_HOST (the
//   destination, as named in the SOCKS request) or LOADGEN_BIND (the servers) give an IPv4
//   address: the fleet row runs in network namespaces, each with a loopback of its own.
//   LOADGEN_DEST_NAME (rate only): the destination named by this host name instead (SOCKS5's
//   domain, SOCKS4a, HTTP CONNECT name:port), for the proxy to look up on each connection.
//   loadgen idle MODE PROXY_PORT DEST_PORT COUNT SECONDS
//        opens COUNT relayed connections (handshake done, one byte echoed), holds
//        them idle for SECONDS, prints how many were up, then closes them.
//   loadgen rate MODE PROXY_PORT DEST_PORT CONCURRENCY COUNT SECONDS
//        MODE: socks5 | socks4 | http | direct (http: an HTTP proxy's CONNECT, the
//        answer read to its empty line). Each connection: connect, (SOCKS or CONNECT
//        request and reply), 64-byte request, 64-byte reply, the destination's close (DEST_PORT is
//        a `loadgen reply` server), close. Stops after COUNT connections or
//        SECONDS, whichever comes first. Prints: connections, seconds, conns/s, p50 and
//        p99 latency in microseconds, failures.
//        socks5 with LOADGEN_USER and LOADGEN_PASSWORD set: RFC 1929 username/password
//        (method 0x02) before the request, as `curl socks5h://user:pass@` does.
//
// Every loop is bounded in count and time; every socket is non-blocking under epoll.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static struct in_addr proxy_host, dest_host, bind_host;

static struct in_addr host_from(const char *variable) {
    struct in_addr address = {.s_addr = htonl(INADDR_LOOPBACK)};
    const char *text = getenv(variable);
    if (text && inet_pton(AF_INET, text, &address) != 1) { fprintf(stderr, "%s: not an IPv4 address\n", variable); exit(2); }
    return address;
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = bind_host};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) { perror("listen"); exit(1); }
    return fd;
}

enum server { ECHO, SINK, REPLY };

static int echo_server(int port, enum server kind) __attribute__((noreturn));
static int echo_server(int port, enum server kind) {
    int listener = listen_on(port), ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener}, events[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    char buffer[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 256, 1000);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                for (int k = 0; k < 256; k++) {
                    int c = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buffer, sizeof buffer);
            if (r <= 0) { close(fd); continue; }
            if (kind == SINK) continue;
            ssize_t off = 0;
            for (int tries = 0; off < r && tries < 1000; tries++) {
                ssize_t w = write(fd, buffer + off, r - off);
                if (w > 0) off += w;
                else if (errno != EAGAIN) break;
            }
            if (kind == REPLY) close(fd);
        }
    }
}

enum mode { SOCKS5, SOCKS4, HTTP, DIRECT };

static enum mode mode_named(const char *name) {
    return !strcmp(name, "socks5") ? SOCKS5 : !strcmp(name, "socks4") ? SOCKS4 : !strcmp(name, "http") ? HTTP : DIRECT;
}

/// Advances the search for an HTTP head's end ("\r\n\r\n") over `count` bytes; returns
/// how many bytes were used up to and including it, or -1 if it has not come yet.
static int head_end(int *matched, const unsigned char *bytes, int count) {
    static const char end[] = "\r\n\r\n";
    for (int i = 0; i < count; i++) {
        *matched = bytes[i] == end[*matched] ? *matched + 1 : (bytes[i] == '\r' ? 1 : 0);
        if (*matched == 4) return i + 1;
    }
    return -1;
}
enum phase { CONNECTING, GREETING, AUTHENTICATING, NEGOTIATING, EXCHANGING, CLOSING };

struct conn {
    int fd;
    enum phase phase;
    double started;
    int have;  // bytes of the current expected reply received
    int matched;  // HTTP: bytes of "\r\n\r\n" matched so far
    int answered;  // HTTP: the answer's status line was checked
};

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int rate(enum mode mode, int proxy_port, int dest_port, int concurrency, long count, double seconds) {
    int ep = epoll_create1(0);
    struct conn *conns = calloc(concurrency, sizeof *conns);
    double *latencies = calloc(count, sizeof *latencies);
    long started = 0, finished = 0, failures = 0;
    unsigned char payload[64];
    memset(payload, 'x', sizeof payload);
    unsigned char request[256];
    int request_length = 0, reply_length = 0;
    // SOCKS5 as clients like curl do it: greeting, wait for the method, then the request
    // (microsocks cannot take both in one segment).
    const char *name = getenv("LOADGEN_DEST_NAME");
    if (name && (strlen(name) < 1 || strlen(name) > 64)) { fprintf(stderr, "LOADGEN_DEST_NAME: 1 to 64 bytes\n"); return 2; }
    if (mode == SOCKS5 && name) {
        size_t n = strlen(name);
        unsigned char r[] = {5, 1, 0, 3, (unsigned char)n};
        memcpy(request, r, sizeof r);
        memcpy(request + sizeof r, name, n);
        request[sizeof r + n] = dest_port >> 8;
        request[sizeof r + n + 1] = dest_port & 255;
        request_length = (int)(sizeof r + n + 2);
        reply_length = 10;
    } else if (mode == SOCKS4 && name) {
        size_t n = strlen(name);
        unsigned char r[] = {4, 1, dest_port >> 8, dest_port & 255, 0, 0, 0, 1, 'b', 0};
        memcpy(request, r, sizeof r);
        memcpy(request + sizeof r, name, n + 1);
        request_length = (int)(sizeof r + n + 1);
        reply_length = 8;
    } else if (mode == SOCKS5) {
        unsigned char r[] = {5, 1, 0, 1, ((unsigned char *)&dest_host)[0], ((unsigned char *)&dest_host)[1], ((unsigned char *)&dest_host)[2], ((unsigned char *)&dest_host)[3], dest_port >> 8, dest_port & 255};
        memcpy(request, r, sizeof r);
        request_length = sizeof r;
        reply_length = 10;
    } else if (mode == SOCKS4) {
        unsigned char r[] = {4, 1, dest_port >> 8, dest_port & 255, ((unsigned char *)&dest_host)[0], ((unsigned char *)&dest_host)[1], ((unsigned char *)&dest_host)[2], ((unsigned char *)&dest_host)[3], 'b', 0};
        memcpy(request, r, sizeof r);
        request_length = sizeof r;
        reply_length = 8;
    } else if (mode == HTTP) {
        char address[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &dest_host, address, sizeof address);
        const char *host = name ? name : address;
        request_length = snprintf((char *)request, sizeof request, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host,
                                  dest_port, host, dest_port);
    }
    int target = mode == DIRECT ? dest_port : proxy_port;
    // RFC 1929: the greeting offers 0x02 alone, then version 1, the name and the password.
    const char *user = getenv("LOADGEN_USER"), *password = getenv("LOADGEN_PASSWORD");
    int authenticate = mode == SOCKS5 && user && password;
    unsigned char greeting[3] = {5, 1, authenticate ? 2 : 0};
    unsigned char credentials[513];
    int credentials_length = 0;
    if (authenticate) {
        size_t u = strlen(user), p = strlen(password);
        if (u < 1 || u > 255 || p < 1 || p > 255) { fprintf(stderr, "LOADGEN_USER and LOADGEN_PASSWORD: 1 to 255 bytes\n"); return 2; }
        credentials[0] = 1;
        credentials[1] = (unsigned char)u;
        memcpy(credentials + 2, user, u);
        credentials[2 + u] = (unsigned char)p;
        memcpy(credentials + 3 + u, password, p);
        credentials_length = (int)(3 + u + p);
    }
    double begin = now(), deadline = begin + seconds;

    void open_one(int slot) {
        struct conn *c = &conns[slot];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(target), .sin_addr = mode == DIRECT ? dest_host : proxy_host};
        c->started = now();
        c->have = 0;
        c->matched = 0;
        c->answered = 0;
        c->phase = CONNECTING;
        connect(c->fd, (struct sockaddr *)&a, sizeof a);
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = slot};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        started++;
    }
    void close_one(int slot, int ok) {
        struct conn *c = &conns[slot];
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        if (ok) latencies[finished++] = now() - c->started;
        else failures++;
        if (started < count && now() < deadline) open_one(slot);
    }

    for (int i = 0; i < concurrency && started < count; i++) open_one(i);
    struct epoll_event events[1024];
    unsigned char buffer[4096];
    while (finished + failures < started && now() < deadline + 5) {
        int n = epoll_wait(ep, events, 1024, 100);
        for (int i = 0; i < n; i++) {
            int slot = events[i].data.u32;
            struct conn *c = &conns[slot];
            if (c->fd < 0) continue;
            if (events[i].events & (EPOLLERR | EPOLLHUP) && c->phase == CONNECTING) { close_one(slot, 0); continue; }
            if (c->phase == CONNECTING && (events[i].events & EPOLLOUT)) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = slot};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                if (mode == DIRECT) {
                    c->phase = EXCHANGING;
                    if (write(c->fd, payload, 64) != 64) { close_one(slot, 0); continue; }
                } else if (mode == SOCKS5) {
                    c->phase = GREETING;
                    if (write(c->fd, greeting, 3) != 3) { close_one(slot, 0); continue; }
                } else {
                    c->phase = NEGOTIATING;
                    if (write(c->fd, request, request_length) != request_length) { close_one(slot, 0); continue; }
                }
                continue;
            }
            if (!(events[i].events & EPOLLIN)) continue;
            ssize_t r = read(c->fd, buffer, sizeof buffer);
            if (r == 0 && c->phase == CLOSING) { close_one(slot, 1); continue; }
            if (r <= 0) { close_one(slot, 0); continue; }
            c->have += r;
            if (c->phase == GREETING && c->have >= 2 && authenticate) {
                c->have -= 2;
                c->phase = AUTHENTICATING;
                if (write(c->fd, credentials, credentials_length) != credentials_length) { close_one(slot, 0); continue; }
                continue;
            }
            if ((c->phase == GREETING || c->phase == AUTHENTICATING) && c->have >= 2) {
                // (RFC 1929's answer: version 1, status 0 for success.)
                if (c->phase == AUTHENTICATING && buffer[r - c->have + 1] != 0) { close_one(slot, 0); continue; }
                c->have -= 2;
                c->phase = NEGOTIATING;
                if (write(c->fd, request, request_length) != request_length) { close_one(slot, 0); continue; }
            }
            if (c->phase == NEGOTIATING && mode == HTTP) {
                // The answer's first read holds its status line: anything but 200 fails.
                if (!c->answered) {
                    c->answered = 1;
                    if (r < 12 || memcmp(buffer, "HTTP/1.", 7) || memcmp(buffer + 9, "200", 3)) { close_one(slot, 0); continue; }
                }
                int used = head_end(&c->matched, buffer, (int)r);
                if (used < 0) { c->have = 0; continue; }
                c->have = (int)r - used;
                c->phase = EXCHANGING;
                if (write(c->fd, payload, 64) != 64) { close_one(slot, 0); continue; }
            }
            if (c->phase == NEGOTIATING && c->have >= reply_length) {
                int granted = mode == SOCKS5 ? (buffer[reply_length - 10 + 1 - (r - c->have + reply_length > 0 ? 0 : 0)] == 0) : 1;
                (void)granted;
                c->have -= reply_length;
                c->phase = EXCHANGING;
                if (write(c->fd, payload, 64) != 64) { close_one(slot, 0); continue; }
            }
            // The reply server closes first; the client waits for that close, so neither
            // it nor the proxy holds a TIME_WAIT socket on an ephemeral port.
            if (c->phase == EXCHANGING && c->have >= 64) c->phase = CLOSING;
        }
    }
    double elapsed = now() - begin;
    qsort(latencies, finished, sizeof *latencies, compare);
    double p50 = finished ? latencies[finished / 2] * 1e6 : 0, p99 = finished ? latencies[(long)(finished * 0.99)] * 1e6 : 0;
    printf("%ld\t%.3f\t%.0f\t%.0f\t%.0f\t%ld\n", finished, elapsed, finished / elapsed, p50, p99, failures);
    return 0;
}

/// Connects and, for a proxy, completes the SOCKS handshake; blocking, for bulk and idle.
static int open_relayed(enum mode mode, int proxy_port, int dest_port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval timeout = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(mode == DIRECT ? dest_port : proxy_port),
                            .sin_addr = mode == DIRECT ? dest_host : proxy_host};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    unsigned char reply[16];
    if (mode == SOCKS5) {
        unsigned char greeting[] = {5, 1, 0}, r[] = {5, 1, 0, 1, ((unsigned char *)&dest_host)[0], ((unsigned char *)&dest_host)[1], ((unsigned char *)&dest_host)[2], ((unsigned char *)&dest_host)[3], dest_port >> 8, dest_port & 255};
        if (write(fd, greeting, 3) != 3 || recv(fd, reply, 2, MSG_WAITALL) != 2 || write(fd, r, sizeof r) != sizeof r
            || recv(fd, reply, 10, MSG_WAITALL) != 10 || reply[1] != 0) { close(fd); return -1; }
    } else if (mode == SOCKS4) {
        unsigned char r[] = {4, 1, dest_port >> 8, dest_port & 255, ((unsigned char *)&dest_host)[0], ((unsigned char *)&dest_host)[1], ((unsigned char *)&dest_host)[2], ((unsigned char *)&dest_host)[3], 'b', 0};
        if (write(fd, r, sizeof r) != sizeof r || recv(fd, reply, 8, MSG_WAITALL) != 8 || reply[1] != 90) { close(fd); return -1; }
    } else if (mode == HTTP) {
        char host[INET_ADDRSTRLEN], r[128];
        inet_ntop(AF_INET, &dest_host, host, sizeof host);
        int length = snprintf(r, sizeof r, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, dest_port, host, dest_port);
        if (write(fd, r, length) != length) { close(fd); return -1; }
        // The answer, a byte at a time up to its empty line (nothing of the tunnel is read).
        unsigned char head[1024];
        int matched = 0, used = 0;
        while (used < (int)sizeof head && recv(fd, &head[used], 1, 0) == 1) {
            if (head_end(&matched, &head[used++], 1) > 0) break;
        }
        if (matched != 4 || used < 12 || memcmp(head + 9, "200", 3)) { close(fd); return -1; }
    }
    return fd;
}

static int bulk(enum mode mode, int proxy_port, int dest_port, long mebibytes, double seconds) {
    int fd = open_relayed(mode, proxy_port, dest_port);
    if (fd < 0) { printf("0\t0\t0\t0\n"); return 1; }
    long total = mebibytes << 20, sent = 0;
    static char out[1 << 16];
    memset(out, 'b', sizeof out);
    double begin = now(), deadline = begin + seconds;
    while (sent < total && now() < deadline) {
        ssize_t w = write(fd, out, sizeof out);
        if (w <= 0) break;
        sent += w;
    }
    shutdown(fd, SHUT_WR);
    char in[256];
    struct timeval timeout = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    while (read(fd, in, sizeof in) > 0) {}
    double elapsed = now() - begin;
    close(fd);
    printf("%ld\t0\t%.3f\t%.1f\n", sent, elapsed, sent / elapsed / 1e6);
    return 0;
}

static int idle(enum mode mode, int proxy_port, int dest_port, int count, double seconds) {
    int *fds = calloc(count, sizeof *fds), up = 0;
    double give_up = now() + 30;  // a proxy that cannot hold them all gets 30 s
    for (int i = 0; i < count; i++) {
        fds[i] = now() < give_up ? open_relayed(mode, proxy_port, dest_port) : -1;
        if (fds[i] < 0) continue;
        char byte = 'i';
        if (write(fds[i], &byte, 1) == 1 && recv(fds[i], &byte, 1, MSG_WAITALL) == 1) up++;
    }
    printf("%d\n", up);
    fflush(stdout);
    double until = now() + seconds;
    while (now() < until) usleep(100000);
    for (int i = 0; i < count; i++) if (fds[i] >= 0) close(fds[i]);
    return 0;
}

static int source_server(int port) __attribute__((noreturn));
static int source_server(int port) {
    int listener = listen_on(port);
    int flags = 0;
    ioctl(listener, FIONBIO, &flags);  // blocking: one stream at a time
    static char out[1 << 16];
    memset(out, 's', sizeof out);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) continue;
        struct timeval timeout = {.tv_sec = 30};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        unsigned char count[8];
        if (recv(fd, count, 8, MSG_WAITALL) == 8) {
            uint64_t total = 0;
            for (int i = 0; i < 8; i++) total = total << 8 | count[i];
            if (total > (64ULL << 30)) total = 64ULL << 30;
            uint64_t sent = 0;
            while (sent < total) {
                size_t chunk = total - sent < sizeof out ? total - sent : sizeof out;
                ssize_t w = write(fd, out, chunk);
                if (w <= 0) break;
                sent += w;
            }
        }
        close(fd);
    }
}

static int download(enum mode mode, int proxy_port, int dest_port, long mebibytes, double seconds) {
    int fd = open_relayed(mode, proxy_port, dest_port);
    if (fd < 0) { printf("0\t0\t0\t0\n"); return 1; }
    uint64_t total = (uint64_t)mebibytes << 20;
    unsigned char count[8];
    for (int i = 0; i < 8; i++) count[i] = total >> (56 - 8 * i);
    struct timeval timeout = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    double begin = now(), deadline = begin + seconds;
    long received = 0;
    if (write(fd, count, 8) == 8) {
        static char in[1 << 16];
        while (now() < deadline) {
            ssize_t r = read(fd, in, sizeof in);
            if (r <= 0) break;
            received += r;
        }
    }
    double elapsed = now() - begin;
    close(fd);
    printf("%ld\t0\t%.3f\t%.1f\n", received, elapsed, received / elapsed / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    proxy_host = host_from("LOADGEN_PROXY_HOST");
    dest_host = host_from("LOADGEN_DEST_HOST");
    bind_host = host_from("LOADGEN_BIND");
    if (argc == 3 && !strcmp(argv[1], "echo")) echo_server(atoi(argv[2]), ECHO);
    if (argc == 3 && !strcmp(argv[1], "sink")) echo_server(atoi(argv[2]), SINK);
    if (argc == 3 && !strcmp(argv[1], "reply")) echo_server(atoi(argv[2]), REPLY);
    if (argc == 3 && !strcmp(argv[1], "source")) source_server(atoi(argv[2]));
    if (argc == 9 - 1 && !strcmp(argv[1], "rate")) {
        enum mode mode = mode_named(argv[2]);
        return rate(mode, atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atol(argv[6]), atof(argv[7]));
    }
    if (argc == 7 && (!strcmp(argv[1], "bulk") || !strcmp(argv[1], "download") || !strcmp(argv[1], "idle"))) {
        enum mode mode = mode_named(argv[2]);
        if (!strcmp(argv[1], "bulk")) return bulk(mode, atoi(argv[3]), atoi(argv[4]), atol(argv[5]), atof(argv[6]));
        if (!strcmp(argv[1], "download")) return download(mode, atoi(argv[3]), atoi(argv[4]), atol(argv[5]), atof(argv[6]));
        return idle(mode, atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    }
    fprintf(stderr, "usage: loadgen echo|sink|reply|source PORT | loadgen rate|bulk|download|idle socks5|socks4|http|direct PROXY_PORT DEST_PORT ...\n");
    return 2;
}
