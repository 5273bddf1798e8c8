/*
 * ws_loadgen: a closed-loop ping load generator for the binary protocol over WebSocket
 * (the default), or over plain TCP with -P, so both figures share one client.
 *
 * Build: cc -O2 -Wall -Wextra -o benchmarks/build/ws_loadgen benchmarks/ws_loadgen.c
 *
 * Load (127.0.0.1 only; every phase bounded in time): -c conns, -d pings outstanding
 * each, -w warm-up s, -t measured s. Connections are opened (and their WebSocket
 * handshakes done, GET /ws with subprotocol trioserver.v1) one by one, blocking; then one
 * epoll loop drives them: each reply queues a new ping, and the pings queued by one
 * readable event go out in one write. Over WebSocket each ping is its own masked binary
 * message (what a browser client sends: one message per request); the server's frames
 * are parsed and only their binary payload is counted, 8 bytes a pong.
 *
 * -S PID: the server's CPU seconds (/proc/PID/stat) over the measured window.
 * Output: one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const unsigned char PING[8] = {0, 8, 0, 0, 0, 0, 0, 0};
static const unsigned char MASK[4] = {0x37, 0xfa, 0x21, 0x3d};
/* One ping as a final, masked binary frame: 2-byte header, mask, 8 masked bytes. */
static unsigned char PING_FRAME[14];
#define MAX_BATCH 64

static int opt_conns = 100, opt_depth = 1, opt_port = 8080, opt_plain = 0;
static double opt_warmup = 1, opt_duration = 3;
static long opt_server_pid = 0;

static void die(const char *msg) {
    fprintf(stderr, "ws_loadgen: %s (%s)\n", msg, strerror(errno));
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds_of(long pid) {
    char path[64], buf[2048];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

typedef struct {
    int fd;
    unsigned rx;              /* payload bytes of a partial pong */
    unsigned char head[14];   /* a frame header being read */
    unsigned head_have, head_need;
    uint64_t payload_left;    /* payload bytes of the current frame still to come */
    bool control;             /* the current frame is a control frame (not counted) */
} conn_t;

static int tcp_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Blocking: connect, and the WebSocket handshake unless -P. */
static void open_conn(conn_t *c) {
    memset(c, 0, sizeof *c);
    c->fd = tcp_connect();
    c->head_need = 2;
    if (opt_plain) return;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: trioserver.v1\r\n\r\n",
                     opt_port);
    if (send(c->fd, req, n, MSG_NOSIGNAL) != n) die("send handshake");
    char resp[1024];
    int have = 0;
    /* Read byte by byte up to the blank line: the server sends nothing after it
     * before our first frame, and nothing of a frame may be swallowed here. */
    while (have < (int)sizeof resp - 1) {
        ssize_t got = recv(c->fd, resp + have, 1, 0);
        if (got <= 0) die("handshake reply");
        have++;
        if (have >= 4 && memcmp(resp + have - 4, "\r\n\r\n", 4) == 0) break;
    }
    resp[have] = 0;
    if (strncmp(resp, "HTTP/1.1 101 ", 13) != 0) {
        fprintf(stderr, "ws_loadgen: handshake refused: %.60s\n", resp);
        exit(1);
    }
}

/* Count the pong payload bytes in `got` bytes from the server (frames parsed). */
static long take(conn_t *c, const unsigned char *buf, size_t got, long *errors) {
    if (opt_plain) return (long)got;
    long payload = 0;
    size_t at = 0;
    while (at < got) {
        if (c->payload_left) {
            size_t k = got - at < c->payload_left ? got - at : (size_t)c->payload_left;
            if (!c->control) payload += (long)k;
            c->payload_left -= k;
            at += k;
            continue;
        }
        c->head[c->head_have++] = buf[at++];
        if (c->head_have == 2) {
            unsigned len7 = c->head[1] & 0x7f;
            c->head_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
            if (c->head[1] & 0x80) (*errors)++; /* a server must not mask */
        }
        if (c->head_have < c->head_need) continue;
        unsigned len7 = c->head[1] & 0x7f;
        uint64_t len = len7;
        if (len7 == 126) len = ((uint64_t)c->head[2] << 8) | c->head[3];
        if (len7 == 127) {
            len = 0;
            for (int i = 2; i < 10; i++) len = (len << 8) | c->head[i];
        }
        unsigned opcode = c->head[0] & 0x0f;
        c->control = opcode >= 8;
        if (opcode == 8) (*errors)++; /* the server closed */
        c->payload_left = len;
        c->head_have = 0;
        c->head_need = 2;
    }
    return payload;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "p:c:d:w:t:S:P")) != -1) {
        switch (opt) {
        case 'p': opt_port = atoi(optarg); break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_depth = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 't': opt_duration = atof(optarg); break;
        case 'S': opt_server_pid = atol(optarg); break;
        case 'P': opt_plain = 1; break;
        default: fprintf(stderr, "usage: see the source\n"); return 64;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    PING_FRAME[0] = 0x82;
    PING_FRAME[1] = 0x80 | 8;
    memcpy(PING_FRAME + 2, MASK, 4);
    for (int i = 0; i < 8; i++) PING_FRAME[6 + i] = PING[i] ^ MASK[i % 4];
    const unsigned char *one = opt_plain ? PING : PING_FRAME;
    size_t one_len = opt_plain ? sizeof PING : sizeof PING_FRAME;
    unsigned char batch[sizeof PING_FRAME * MAX_BATCH];
    for (int k = 0; k < MAX_BATCH; k++) memcpy(batch + one_len * k, one, one_len);

    conn_t *conns = calloc(opt_conns, sizeof *conns);
    int ep = epoll_create1(0);
    for (int i = 0; i < opt_conns; i++) {
        open_conn(&conns[i]);
        fcntl(conns[i].fd, F_SETFL, fcntl(conns[i].fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    for (int i = 0; i < opt_conns; i++)
        for (int k = 0; k < opt_depth; k++)
            if (send(conns[i].fd, one, one_len, MSG_NOSIGNAL) != (ssize_t)one_len)
                die("first pings");
    double start = now_s(), measure_from = start + opt_warmup, end = measure_from + opt_duration;
    long replies = 0, errors = 0;
    double cpu0 = -1, self0 = 0;
    bool measuring = false;
    unsigned char buf[65536];
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (!measuring && t >= measure_from) {
            measuring = true;
            replies = 0;
            cpu0 = cpu_seconds_of(opt_server_pid);
            self0 = self_cpu();
        }
        if (t >= end) break;
        int n = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[evs[e].data.u32];
            long got_pings = 0;
            for (;;) {
                ssize_t got = recv(c->fd, buf, sizeof buf, 0);
                if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (got <= 0) {
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    break;
                }
                unsigned total = c->rx + (unsigned)take(c, buf, (size_t)got, &errors);
                got_pings += total / 8;
                c->rx = total % 8;
                if (got < (ssize_t)sizeof buf) break;
            }
            replies += got_pings;
            while (got_pings > 0) {
                int k = got_pings > MAX_BATCH ? MAX_BATCH : (int)got_pings;
                ssize_t size = (ssize_t)(one_len * k);
                if (send(c->fd, batch, size, MSG_NOSIGNAL) != size) errors++;
                got_pings -= k;
            }
        }
    }
    double elapsed = now_s() - measure_from;
    double cpu1 = cpu_seconds_of(opt_server_pid);
    double server_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    printf("{\"mode\":\"load\",\"websocket\":%s,\"conns\":%d,\"depth\":%d,\"seconds\":%.3f,"
           "\"requests\":%ld,\"rps\":%.1f,\"server_cpu_s\":%.3f,\"per_cpu_s\":%.1f,"
           "\"loadgen_cpu_s\":%.3f,\"errors\":%ld}\n",
           opt_plain ? "false" : "true", opt_conns, opt_depth, elapsed, replies,
           replies / elapsed, server_cpu, server_cpu > 0 ? replies / server_cpu : 0.0,
           self_cpu() - self0, errors);
    return errors ? 2 : 0;
}
