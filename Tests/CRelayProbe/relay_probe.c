#include "relay_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int echo_listener = -1;
static pthread_t echo_thread;

static struct sockaddr_in loopback(uint16_t port) {
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

static void set_timeout(int fd) {
    struct timeval timeout = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
}

// Reads exactly `length` bytes; 0 on success.
static int read_exactly(int fd, unsigned char *buffer, size_t length) {
    size_t done = 0;
    while (done < length) {
        ssize_t got = read(fd, buffer + done, length - done);
        if (got <= 0) return -1;
        done += (size_t)got;
    }
    return 0;
}

static int write_all(int fd, const unsigned char *buffer, size_t length) {
    size_t done = 0;
    while (done < length) {
        ssize_t put = write(fd, buffer + done, length - done);
        if (put <= 0) return -1;
        done += (size_t)put;
    }
    return 0;
}

static void *serve_echo(void *unused) {
    (void)unused;
    unsigned char buffer[4096];
    for (;;) {
        int connection = accept(echo_listener, NULL, NULL);
        if (connection < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return NULL;  // the listener was shut down: stop
        }
        set_timeout(connection);
        for (;;) {
            ssize_t got = read(connection, buffer, sizeof buffer);
            if (got <= 0 || write_all(connection, buffer, (size_t)got) != 0) break;
        }
        close(connection);
    }
}

int relay_probe_echo_start(uint16_t *port) {
    echo_listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (echo_listener < 0) return -1;
    struct sockaddr_in address = loopback(0);
    socklen_t length = sizeof address;
    if (bind(echo_listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(echo_listener, 64) != 0 ||
        getsockname(echo_listener, (struct sockaddr *)&address, &length) != 0) {
        close(echo_listener);
        return -1;
    }
    *port = ntohs(address.sin_port);
    if (pthread_create(&echo_thread, NULL, serve_echo, NULL) != 0) {
        close(echo_listener);
        return -1;
    }
    return 0;
}

void relay_probe_echo_stop(void) {
    shutdown(echo_listener, SHUT_RDWR);
    pthread_join(echo_thread, NULL);
    close(echo_listener);
}

static int round_trip(uint16_t proxy_port, uint16_t echo_port, const char **failure) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return *failure = "socket", -1;
    set_timeout(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in proxy = loopback(proxy_port);
    unsigned char reply[10], payload[64], echoed[64];
    const unsigned char greeting[3] = {5, 1, 0};
    const unsigned char request[10] = {5, 1, 0, 1, 127, 0, 0, 1, (unsigned char)(echo_port >> 8), (unsigned char)echo_port};
    memset(payload, 'x', sizeof payload);
    int result = -1;
    if (connect(fd, (struct sockaddr *)&proxy, sizeof proxy) != 0) {
        *failure = "connect to the proxy";
    } else if (write_all(fd, greeting, sizeof greeting) != 0 || read_exactly(fd, reply, 2) != 0 || reply[0] != 5 ||
               reply[1] != 0) {
        *failure = "SOCKS5 greeting";
    } else if (write_all(fd, request, sizeof request) != 0 || read_exactly(fd, reply, 10) != 0 || reply[1] != 0) {
        *failure = "SOCKS5 CONNECT";
    } else if (write_all(fd, payload, sizeof payload) != 0 || read_exactly(fd, echoed, sizeof echoed) != 0 ||
               memcmp(payload, echoed, sizeof payload) != 0) {
        *failure = "64-byte echo";
    } else {
        result = 0;
    }
    close(fd);
    return result;
}

int relay_probe_socks5_round_trips(uint16_t proxy_port, uint16_t echo_port, int count, const char **failure) {
    for (int done = 0; done < count; done++) {
        if (round_trip(proxy_port, echo_port, failure) != 0) return done;
    }
    return count;
}

void *volatile relay_probe_last_block;

void relay_probe_allocate_once(void) {
    relay_probe_last_block = malloc(64);
    free(relay_probe_last_block);
}
