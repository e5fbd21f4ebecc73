// GSS-API (RFC 1961) load for scripts/bench, on MIT Kerberos (link -lgssapi_krb5).
// The client's ticket comes from KRB5CCNAME; the service is rcmd@localhost.
//
//   gssload wrap SECONDS
//        the library's own limit: gss_wrap of 64 KiB buffers in one thread, for SECONDS
//        each with integrity and with confidentiality, on a context made in-process
//        (acceptor keys from KRB5_KTNAME). Prints: level, MB/s.
//   gssload rate METHOD PROXY_PORT DEST_PORT CONCURRENCY SECONDS [USER PASSWORD]
//        METHOD: none | password | gssapi. Each connection: greeting, authentication
//        (a whole GSS-API context, level none, for gssapi), CONNECT, 64 bytes each way
//        (DEST_PORT is a `loadgen reply` server), close. CONCURRENCY threads, each one
//        connection at a time. Prints: connections, seconds, conns/s, p50 and p99 µs,
//        failures.
//   gssload bulk LEVEL PROXY_PORT DEST_PORT MEBIBYTES
//        LEVEL: integrity | confidentiality. One stream to a sink (`loadgen sink`),
//        64 KiB plain per wrapped message, then a half-close and wait for the close.
//        Prints: bytes, seconds, MB/s (of plain bytes).
//
// Blocking sockets with a 20 s time-out: every loop is bounded in count and time.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_krb5.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int write_all(int fd, const void *data, size_t size) {
    const char *p = data;
    while (size > 0) {
        ssize_t w = write(fd, p, size);
        if (w <= 0) return -1;
        p += w;
        size -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *data, size_t size) {
    char *p = data;
    while (size > 0) {
        ssize_t r = read(fd, p, size);
        if (r <= 0) return -1;
        p += r;
        size -= (size_t)r;
    }
    return 0;
}

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval timeout = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_message(int fd, int kind, const void *token, size_t size) {
    unsigned char head[4] = {1, (unsigned char)kind, (unsigned char)(size >> 8), (unsigned char)size};
    return write_all(fd, head, 4) || write_all(fd, token, size);
}

/// A message's token into `buffer`; returns its length, or -1 (also when it does not fit).
static long read_message(int fd, int kind, unsigned char *buffer, size_t capacity) {
    unsigned char head[4];
    if (read_all(fd, head, 2) || head[0] != 1 || head[1] != kind) return -1;
    if (read_all(fd, head + 2, 2)) return -1;
    size_t size = (size_t)head[2] << 8 | head[3];
    if (size > capacity || read_all(fd, buffer, size)) return -1;
    return (long)size;
}

static gss_name_t service_name(void) {
    OM_uint32 minor;
    gss_buffer_desc text = {strlen("rcmd@localhost"), "rcmd@localhost"};
    gss_name_t name = GSS_C_NO_NAME;
    gss_import_name(&minor, &text, GSS_C_NT_HOSTBASED_SERVICE, &name);
    return name;
}

/// Greeting with method 0x01, the context, and the level (wrapped). Returns the
/// context, or GSS_C_NO_CONTEXT.
static gss_ctx_id_t gss_login(int fd, int level) {
    unsigned char buffer[1024];  // the level's reply: a few dozen bytes (threads each have their own)
    unsigned char greeting[3] = {5, 1, 1}, method[2];
    if (write_all(fd, greeting, 3) || read_all(fd, method, 2) || method[1] != 1) return GSS_C_NO_CONTEXT;
    OM_uint32 major, minor;
    gss_ctx_id_t context = GSS_C_NO_CONTEXT;
    gss_name_t name = service_name();
    gss_buffer_desc in = GSS_C_EMPTY_BUFFER, out = GSS_C_EMPTY_BUFFER;
    unsigned char *reply = malloc(65536);
    do {
        major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &context, name, GSS_C_NO_OID,
                                     GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG | GSS_C_SEQUENCE_FLAG | GSS_C_INTEG_FLAG |
                                         GSS_C_CONF_FLAG,
                                     0, GSS_C_NO_CHANNEL_BINDINGS, &in, NULL, &out, NULL, NULL);
        if (GSS_ERROR(major)) break;
        if (out.length > 0) {
            int failed = send_message(fd, 1, out.value, out.length);
            gss_release_buffer(&minor, &out);
            if (failed) {
                major = GSS_S_FAILURE;
                break;
            }
        }
        if (major & GSS_S_CONTINUE_NEEDED) {
            long size = read_message(fd, 1, reply, 65536);
            if (size < 0) {
                major = GSS_S_FAILURE;
                break;
            }
            in.value = reply;
            in.length = (size_t)size;
        }
    } while (major & GSS_S_CONTINUE_NEEDED);
    free(reply);
    gss_release_name(&minor, &name);
    if (GSS_ERROR(major) && getenv("GSSLOAD_VERBOSE")) {
        OM_uint32 context_status = 0, ignored;
        gss_buffer_desc text = GSS_C_EMPTY_BUFFER;
        gss_display_status(&ignored, minor, GSS_C_MECH_CODE, GSS_C_NO_OID, &context_status, &text);
        fprintf(stderr, "context failed: major %x: %.*s\n", major, (int)text.length, (char *)text.value);
        gss_release_buffer(&ignored, &text);
    }
    if (GSS_ERROR(major)) {
        if (context != GSS_C_NO_CONTEXT) gss_delete_sec_context(&minor, &context, GSS_C_NO_BUFFER);
        return GSS_C_NO_CONTEXT;
    }
    unsigned char octet = (unsigned char)level;
    gss_buffer_desc plain = {1, &octet}, wrapped = GSS_C_EMPTY_BUFFER, unwrapped = GSS_C_EMPTY_BUFFER;
    gss_wrap(&minor, context, 0, GSS_C_QOP_DEFAULT, &plain, NULL, &wrapped);
    int failed = send_message(fd, 2, wrapped.value, wrapped.length);
    gss_release_buffer(&minor, &wrapped);
    long size = failed ? -1 : read_message(fd, 2, buffer, sizeof buffer);
    gss_buffer_desc token = {(size_t)(size < 0 ? 0 : size), buffer};
    if (size < 0 || GSS_ERROR(gss_unwrap(&minor, context, &token, &unwrapped, NULL, NULL)) || unwrapped.length != 1) {
        gss_delete_sec_context(&minor, &context, GSS_C_NO_BUFFER);
        return GSS_C_NO_CONTEXT;
    }
    gss_release_buffer(&minor, &unwrapped);
    return context;
}

// MARK: wrap

static int wrap_limit(double seconds) {
    OM_uint32 major, minor;
    gss_cred_id_t acceptor = GSS_C_NO_CREDENTIAL;
    gss_ctx_id_t client = GSS_C_NO_CONTEXT, server = GSS_C_NO_CONTEXT;
    gss_name_t name = service_name();
    gss_buffer_desc in = GSS_C_EMPTY_BUFFER, out = GSS_C_EMPTY_BUFFER, back = GSS_C_EMPTY_BUFFER;
    major = gss_acquire_cred(&minor, GSS_C_NO_NAME, 0, GSS_C_NO_OID_SET, GSS_C_ACCEPT, &acceptor, NULL, NULL);
    if (GSS_ERROR(major)) { fprintf(stderr, "gss_acquire_cred failed\n"); return 1; }
    do {
        major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &client, name, GSS_C_NO_OID,
                                     GSS_C_MUTUAL_FLAG | GSS_C_INTEG_FLAG | GSS_C_CONF_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS,
                                     &back, NULL, &out, NULL, NULL);
        if (GSS_ERROR(major)) { fprintf(stderr, "gss_init_sec_context failed\n"); return 1; }
        if (out.length == 0) break;
        gss_release_buffer(&minor, &back);
        OM_uint32 accepted = gss_accept_sec_context(&minor, &server, acceptor, &out, GSS_C_NO_CHANNEL_BINDINGS, NULL,
                                                    NULL, &back, NULL, NULL, NULL);
        gss_release_buffer(&minor, &out);
        if (GSS_ERROR(accepted)) { fprintf(stderr, "gss_accept_sec_context failed\n"); return 1; }
    } while (major & GSS_S_CONTINUE_NEEDED);
    static unsigned char block[1 << 16];
    memset(block, 'w', sizeof block);
    for (int confidential = 0; confidential <= 1; confidential++) {
        long bytes = 0;
        double begin = now();
        while (now() - begin < seconds) {
            gss_buffer_desc plain = {sizeof block, block};
            if (GSS_ERROR(gss_wrap(&minor, client, confidential, GSS_C_QOP_DEFAULT, &plain, NULL, &out))) return 1;
            gss_release_buffer(&minor, &out);
            bytes += sizeof block;
        }
        printf("%s\t%.1f\n", confidential ? "confidentiality" : "integrity", bytes / (now() - begin) / 1e6);
    }
    (void)in;
    return 0;
}

// MARK: rate

struct rate_shared {
    const char *method, *user, *password;
    int proxy_port, dest_port;
    double deadline;
    pthread_mutex_t lock;
    double *latencies;
    long finished, failures, capacity;
};

static int one_connection(struct rate_shared *s) {
    int fd = dial(s->proxy_port);
    if (fd < 0) {
        if (getenv("GSSLOAD_VERBOSE")) perror("connect");
        return -1;
    }
    int ok = 0;
    unsigned char reply[16];
    if (!strcmp(s->method, "gssapi")) {
        gss_ctx_id_t context = gss_login(fd, 0);
        if (context == GSS_C_NO_CONTEXT) ok = -1;
        else {
            OM_uint32 minor;
            gss_delete_sec_context(&minor, &context, GSS_C_NO_BUFFER);
        }
    } else if (!strcmp(s->method, "password")) {
        unsigned char greeting[3] = {5, 1, 2}, auth[600];
        size_t u = strlen(s->user), p = strlen(s->password), n = 0;
        auth[n++] = 1;
        auth[n++] = (unsigned char)u;
        memcpy(auth + n, s->user, u);
        n += u;
        auth[n++] = (unsigned char)p;
        memcpy(auth + n, s->password, p);
        n += p;
        if (write_all(fd, greeting, 3) || read_all(fd, reply, 2) || reply[1] != 2 || write_all(fd, auth, n) ||
            read_all(fd, reply, 2) || reply[1] != 0)
            ok = -1;
    } else {
        unsigned char greeting[3] = {5, 1, 0};
        if (write_all(fd, greeting, 3) || read_all(fd, reply, 2) || reply[1] != 0) ok = -1;
    }
    unsigned char request[10] = {5, 1, 0, 1, 127, 0, 0, 1, (unsigned char)(s->dest_port >> 8),
                                 (unsigned char)s->dest_port};
    unsigned char payload[64];
    memset(payload, 'x', sizeof payload);
    if (ok != 0 && getenv("GSSLOAD_VERBOSE")) fprintf(stderr, "authentication failed\n");
    if (ok == 0 && (write_all(fd, request, 10) || read_all(fd, reply, 10) || reply[1] != 0 ||
                    write_all(fd, payload, 64) || read_all(fd, payload, 64))) {
        if (getenv("GSSLOAD_VERBOSE")) perror("request or payload");
        ok = -1;
    }
    close(fd);
    return ok;
}

static void *rate_worker(void *argument) {
    struct rate_shared *s = argument;
    while (now() < s->deadline) {
        double begin = now();
        int ok = one_connection(s);
        pthread_mutex_lock(&s->lock);
        if (ok == 0 && s->finished < s->capacity) s->latencies[s->finished++] = now() - begin;
        else if (ok != 0) s->failures++;
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int rate(struct rate_shared *s, int concurrency, double seconds) {
    s->capacity = 4000000;
    s->latencies = calloc((size_t)s->capacity, sizeof(double));
    pthread_mutex_init(&s->lock, NULL);
    double begin = now();
    s->deadline = begin + seconds;
    pthread_t threads[256];
    if (concurrency > 256) concurrency = 256;
    for (int i = 0; i < concurrency; i++) pthread_create(&threads[i], NULL, rate_worker, s);
    for (int i = 0; i < concurrency; i++) pthread_join(threads[i], NULL);
    double elapsed = now() - begin;
    qsort(s->latencies, (size_t)s->finished, sizeof(double), compare);
    double p50 = s->finished ? s->latencies[s->finished / 2] : 0, p99 = s->finished ? s->latencies[s->finished * 99 / 100] : 0;
    printf("%ld\t%.3f\t%.0f\t%.0f\t%.0f\t%ld\n", s->finished, elapsed, s->finished / elapsed, p50 * 1e6, p99 * 1e6,
           s->failures);
    return 0;
}

// MARK: bulk

static int bulk(int confidential, int proxy_port, int dest_port, long mebibytes) {
    int fd = dial(proxy_port);
    if (fd < 0) return 1;
    gss_ctx_id_t context = gss_login(fd, confidential ? 2 : 1);
    if (context == GSS_C_NO_CONTEXT) { fprintf(stderr, "GSS-API login failed\n"); return 1; }
    OM_uint32 minor;
    unsigned char request[10] = {5, 1, 0, 1, 127, 0, 0, 1, (unsigned char)(dest_port >> 8), (unsigned char)dest_port};
    gss_buffer_desc plain = {10, request}, wrapped = GSS_C_EMPTY_BUFFER, unwrapped = GSS_C_EMPTY_BUFFER;
    static unsigned char buffer[65536];
    gss_wrap(&minor, context, confidential, GSS_C_QOP_DEFAULT, &plain, NULL, &wrapped);
    send_message(fd, 3, wrapped.value, wrapped.length);
    gss_release_buffer(&minor, &wrapped);
    long size = read_message(fd, 3, buffer, sizeof buffer);
    gss_buffer_desc token = {(size_t)(size < 0 ? 0 : size), buffer};
    if (size < 0 || GSS_ERROR(gss_unwrap(&minor, context, &token, &unwrapped, NULL, NULL)) ||
        ((unsigned char *)unwrapped.value)[1] != 0) {
        fprintf(stderr, "CONNECT refused\n");
        return 1;
    }
    gss_release_buffer(&minor, &unwrapped);
    OM_uint32 limit = 0;
    gss_wrap_size_limit(&minor, context, confidential, GSS_C_QOP_DEFAULT, 65535, &limit);
    static unsigned char block[1 << 16];
    memset(block, 'b', sizeof block);
    long total = mebibytes << 20, sent = 0;
    double begin = now();
    while (sent < total) {
        gss_buffer_desc piece = {limit, block};
        if (GSS_ERROR(gss_wrap(&minor, context, confidential, GSS_C_QOP_DEFAULT, &piece, NULL, &wrapped))) break;
        int failed = send_message(fd, 3, wrapped.value, wrapped.length);
        gss_release_buffer(&minor, &wrapped);
        if (failed) break;
        sent += limit;
    }
    shutdown(fd, SHUT_WR);
    while (read(fd, buffer, sizeof buffer) > 0) {}
    double elapsed = now() - begin;
    close(fd);
    printf("%ld\t%.3f\t%.1f\n", sent, elapsed, sent / elapsed / 1e6);
    gss_delete_sec_context(&minor, &context, GSS_C_NO_BUFFER);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "wrap")) return wrap_limit(atof(argv[2]));
    if ((argc == 7 || argc == 9) && !strcmp(argv[1], "rate")) {
        struct rate_shared s = {.method = argv[2], .proxy_port = atoi(argv[3]), .dest_port = atoi(argv[4])};
        s.user = argc == 9 ? argv[7] : "";
        s.password = argc == 9 ? argv[8] : "";
        return rate(&s, atoi(argv[5]), atof(argv[6]));
    }
    if (argc == 6 && !strcmp(argv[1], "bulk"))
        return bulk(!strcmp(argv[2], "confidentiality"), atoi(argv[3]), atoi(argv[4]), atol(argv[5]));
    fprintf(stderr, "usage: see the top of gssload.c\n");
    return 2;
}
