/*
 * tls_loadgen: a closed-loop ping load generator for the binary protocol over TLS
 * (OpenSSL), or in plaintext with -P, so TLS and plaintext figures share one client.
 *
 * Build: cc -O2 -Wall -Wextra -o benchmarks/build/tls_loadgen benchmarks/tls_loadgen.c \
 *            -lssl -lcrypto -lpthread
 *
 * Modes (127.0.0.1 only; every phase bounded in time):
 *   load (default): -c conns, -d pings outstanding each, -w warm-up s, -t measured s.
 *                   Connections are opened and handshaken one by one (blocking), then
 *                   driven by one epoll loop; each reply queues a new ping, and the pings
 *                   queued by one readable event go out in one SSL_write.
 *   -H:             handshakes: -c threads, each looping new connection, handshake, one
 *                   ping, its reply, close (a close_notify, not waited for), for -t s.
 *   -R:             with -H, resume: each thread offers the session (TLS 1.3 ticket) its
 *                   previous connection received; "resumed" counts the server's yeses.
 *   -i:             idle: open -c connections (handshake + one ping each), print
 *                   "ready" and hold them -t s, then one more ping on each; exit.
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
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

static int opt_conns = 100, opt_depth = 1, opt_port = 10000, opt_plain = 0;
static int opt_handshakes = 0, opt_idle = 0, opt_resume = 0;
static double opt_warmup = 1, opt_duration = 3;
static long opt_server_pid = 0;
static SSL_CTX *ctx;

static void die(const char *msg) {
    fprintf(stderr, "tls_loadgen: %s (%s)\n", msg, strerror(errno));
    ERR_print_errors_fp(stderr);
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
    SSL *ssl;
    unsigned rx; /* bytes of a partial reply */
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

/* Blocking: connect, handshake (offering `session`, if any, for resumption). */
static void open_conn_with(conn_t *c, SSL_SESSION *session) {
    c->fd = tcp_connect();
    c->ssl = NULL;
    c->rx = 0;
    if (opt_plain) return;
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    if (session) SSL_set_session(c->ssl, session);
    if (SSL_connect(c->ssl) != 1) die("handshake");
}

static void open_conn(conn_t *c) { open_conn_with(c, NULL); }

static int c_write(conn_t *c, const void *buf, int n) {
    if (!c->ssl) return (int)send(c->fd, buf, n, MSG_NOSIGNAL);
    return SSL_write(c->ssl, buf, n);
}

/* >0 bytes, 0 nothing now (non-blocking), -1 closed/error */
static int c_read(conn_t *c, void *buf, int n) {
    if (!c->ssl) {
        ssize_t got = recv(c->fd, buf, n, 0);
        if (got > 0) return (int)got;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        return -1;
    }
    int got = SSL_read(c->ssl, buf, n);
    if (got > 0) return got;
    int err = SSL_get_error(c->ssl, got);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
    return -1;
}

static void blocking_ping(conn_t *c) {
    unsigned char buf[8];
    if (c_write(c, PING, 8) != 8) die("send ping");
    int have = 0;
    while (have < 8) {
        int got = c_read(c, buf + have, 8 - have);
        if (got <= 0) die("ping reply");
        have += got;
    }
}

static void close_conn(conn_t *c) {
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* our close_notify; the peer's is not waited for */
        SSL_free(c->ssl);
    }
    close(c->fd);
}

/* ---------------------------------------------------------------- load */

static int run_load(void) {
    conn_t *conns = calloc(opt_conns, sizeof *conns);
    int ep = epoll_create1(0);
    unsigned char *out = malloc(8 * (size_t)opt_depth * 64);
    for (int i = 0; i < opt_conns; i++) {
        open_conn(&conns[i]);
        fcntl(conns[i].fd, F_SETFL, fcntl(conns[i].fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    unsigned char pings[8 * 64];
    for (int k = 0; k < 64; k++) memcpy(pings + 8 * k, PING, 8);
    for (int i = 0; i < opt_conns; i++)
        for (int k = 0; k < opt_depth; k++)
            if (c_write(&conns[i], PING, 8) != 8) die("first pings");
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
            int got_pings = 0;
            for (;;) {
                int got = c_read(c, buf, sizeof buf);
                if (got == 0) break;
                if (got < 0) {
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    break;
                }
                unsigned total = c->rx + (unsigned)got;
                got_pings += total / 8;
                c->rx = total % 8;
                /* TLS: read until WANT_READ (OpenSSL may hold records the socket no
                 * longer shows to epoll); plaintext: a short read drained the socket. */
                if (!c->ssl && got < (int)sizeof buf) break;
            }
            replies += got_pings;
            while (got_pings > 0) {
                int k = got_pings > 64 ? 64 : got_pings;
                if (c_write(c, pings, 8 * k) != 8 * k) errors++;
                got_pings -= k;
            }
        }
    }
    double elapsed = now_s() - measure_from;
    double cpu1 = cpu_seconds_of(opt_server_pid);
    double server_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    printf("{\"mode\":\"load\",\"tls\":%s,\"conns\":%d,\"depth\":%d,\"seconds\":%.3f,"
           "\"requests\":%ld,\"rps\":%.1f,\"server_cpu_s\":%.3f,\"per_cpu_s\":%.1f,"
           "\"loadgen_cpu_s\":%.3f,\"errors\":%ld}\n",
           opt_plain ? "false" : "true", opt_conns, opt_depth, elapsed, replies,
           replies / elapsed, server_cpu, server_cpu > 0 ? replies / server_cpu : 0.0,
           self_cpu() - self0, errors);
    free(out);
    return errors ? 2 : 0;
}

/* ---------------------------------------------------------- handshakes */

static atomic_long hs_done, hs_errors, hs_resumed;
static atomic_bool hs_counting, hs_stop;

static void *hs_thread(void *arg) {
    (void)arg;
    SSL_SESSION *session = NULL; /* -R: the ticket the previous connection received */
    while (!atomic_load(&hs_stop)) {
        conn_t c;
        open_conn_with(&c, session);
        blocking_ping(&c); /* its reply comes after the server's tickets */
        bool resumed = c.ssl && SSL_session_reused(c.ssl);
        if (opt_resume && c.ssl) {
            SSL_SESSION *next = SSL_get1_session(c.ssl);
            if (session) SSL_SESSION_free(session);
            session = next;
        }
        close_conn(&c);
        if (atomic_load(&hs_counting)) {
            atomic_fetch_add(&hs_done, 1);
            if (resumed) atomic_fetch_add(&hs_resumed, 1);
        }
    }
    if (session) SSL_SESSION_free(session);
    return NULL;
}

static int run_handshakes(void) {
    pthread_t *threads = calloc(opt_conns, sizeof *threads);
    for (int i = 0; i < opt_conns; i++) pthread_create(&threads[i], NULL, hs_thread, NULL);
    struct timespec w = {(time_t)opt_warmup, (long)((opt_warmup - (long)opt_warmup) * 1e9)};
    nanosleep(&w, NULL);
    double cpu0 = cpu_seconds_of(opt_server_pid), self0 = self_cpu(), t0 = now_s();
    atomic_store(&hs_counting, true);
    struct timespec d = {(time_t)opt_duration, (long)((opt_duration - (long)opt_duration) * 1e9)};
    nanosleep(&d, NULL);
    atomic_store(&hs_counting, false);
    long done = atomic_load(&hs_done);
    double elapsed = now_s() - t0, cpu1 = cpu_seconds_of(opt_server_pid);
    double self1 = self_cpu();
    atomic_store(&hs_stop, true);
    for (int i = 0; i < opt_conns; i++) pthread_join(threads[i], NULL);
    double server_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    printf("{\"mode\":\"handshakes\",\"tls\":%s,\"threads\":%d,\"seconds\":%.3f,"
           "\"requests\":%ld,\"rps\":%.1f,\"server_cpu_s\":%.3f,\"per_cpu_s\":%.1f,"
           "\"loadgen_cpu_s\":%.3f,\"errors\":%ld,\"resumed\":%ld}\n",
           opt_plain ? "false" : "true", opt_conns, elapsed, done, done / elapsed, server_cpu,
           server_cpu > 0 ? done / server_cpu : 0.0, self1 - self0, atomic_load(&hs_errors),
           atomic_load(&hs_resumed));
    return 0;
}

/* ---------------------------------------------------------------- idle */

static int run_idle(void) {
    conn_t *conns = calloc(opt_conns, sizeof *conns);
    for (int i = 0; i < opt_conns; i++) {
        open_conn(&conns[i]);
        blocking_ping(&conns[i]);
    }
    printf("ready\n");
    fflush(stdout);
    struct timespec d = {(time_t)opt_duration, 0};
    nanosleep(&d, NULL);
    for (int i = 0; i < opt_conns; i++) blocking_ping(&conns[i]);
    printf("{\"mode\":\"idle\",\"tls\":%s,\"conns\":%d,\"answered\":%d}\n",
           opt_plain ? "false" : "true", opt_conns, opt_conns);
    for (int i = 0; i < opt_conns; i++) close_conn(&conns[i]);
    return 0;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "p:c:d:w:t:S:PHiR")) != -1) {
        switch (opt) {
        case 'p': opt_port = atoi(optarg); break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_depth = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 't': opt_duration = atof(optarg); break;
        case 'S': opt_server_pid = atol(optarg); break;
        case 'P': opt_plain = 1; break;
        case 'H': opt_handshakes = 1; break;
        case 'i': opt_idle = 1; break;
        case 'R': opt_resume = 1; break;
        default: fprintf(stderr, "usage: see the source\n"); return 64;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* the same (cheaper) client for both */
    /* Every handshake is full, unless -R hands each connection the previous one's ticket
     * (SSL_set_session; the context's own cache stays off). */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (opt_handshakes) return run_handshakes();
    if (opt_idle) return run_idle();
    return run_load();
}
