/*
 * loadgen: a closed-loop load generator for the trioserver binary protocol.
 *
 * One thread, epoll, non-blocking sockets, loopback only (127.0.0.1).
 * Each connection keeps D requests outstanding: every reply received queues a
 * new request, and all requests queued while handling one readable event go
 * out in one send() (one write per connection per loop iteration).
 *
 * Packet: 8-byte big-endian header (u16 pkgLen incl. header, u16 msgCode,
 * u32 CRC-32 of the body, 0 for an empty body) followed by the body.
 *
 * Build: cc -O2 -Wall -Wextra -o benchmarks/build/loadgen benchmarks/loadgen.c
 * (CRC-32 is a built-in slice-by-8 table: no zlib needed.)
 *
 * Modes:
 *   load (default): -c conns, -d depth, -w warm-up s, -t measured s, -m mix.
 *   -N total:       send exactly `total` requests (e.g. registering accounts
 *                   for a later login run), then stop; -t bounds it in time.
 *   -i idle:        open -c connections, hold them idle for -t s, then with -P
 *                   send one ping on each and check every one is answered.
 *   -s storm:       a reconnect storm: open -c connections as fast as they can
 *                   be opened, each sends one request (-m resume or login) as
 *                   soon as it is up; the run ends when every one is answered
 *                   (or after -t s). Reports the time from the first connect to
 *                   the last answer, and the result codes.
 *
 * Resume (-m resume, code 1) needs -R FILE: records of 88 bytes, a username
 * field (56 bytes, NUL-padded) and a 32-byte session token, used in turn.
 *
 * Server-side probes (-S PID): the server's CPU time (/proc/PID/stat) over
 * the measured window, and in idle mode its VmRSS and open fd count before
 * connecting, after the idle hold, and after the final pings.
 *
 * Every phase is bounded in time: connecting (-T), measuring (-w + -t), the
 * final pings (-T).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_PKG 29000
#define RBUF_SIZE (256 * 1024)
#define MAX_EVENTS 1024
#define MAX_KINDS 8
#define CONNECT_INFLIGHT 256

enum kind { K_PING = 0, K_REGISTER = 1, K_LOGIN = 2, K_CUSTOM = 3, K_RESUME = 4 };
#define N_KINDS 5
#define RESUME_BODY 88

/* ------------------------------------------------------------------ CRC-32 */

static uint32_t crc_tab[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_tab[0][i];
        for (int t = 1; t < 8; t++) {
            c = crc_tab[0][c & 0xff] ^ (c >> 8);
            crc_tab[t][i] = c;
        }
    }
}

/* Standard CRC-32 (zlib.crc32), slice-by-8. */
static uint32_t crc32_buf(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint32_t a = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                          (uint32_t)p[3] << 24);
        uint32_t b = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                     (uint32_t)p[7] << 24;
        c = crc_tab[7][a & 0xff] ^ crc_tab[6][(a >> 8) & 0xff] ^ crc_tab[5][(a >> 16) & 0xff] ^
            crc_tab[4][a >> 24] ^ crc_tab[3][b & 0xff] ^ crc_tab[2][(b >> 8) & 0xff] ^
            crc_tab[1][(b >> 16) & 0xff] ^ crc_tab[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ------------------------------------------------------------- helpers */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static double cpu_seconds_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------ server probes (/proc) */

/* -S PID[,PID...]: the server's processes (e.g. a master's workers); every
 * probe is the sum over them. */
#define MAX_SERVER_PIDS 64
static long server_pids[MAX_SERVER_PIDS];
static int n_server_pids = 0;

static void parse_pids(const char *arg) {
    char *s = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long pid = atol(tok);
        if (pid <= 0 || n_server_pids == MAX_SERVER_PIDS) die("bad -S PID list");
        server_pids[n_server_pids++] = pid;
    }
    free(s);
}

/* utime+stime of one process in seconds, or -1. */
static double cpu_seconds_of(long pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces */
    if (!p) return -1;
    p += 2; /* now at field 3 (state) */
    unsigned long ut = 0, st = 0;
    /* fields 3..15: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS of one process in KiB, or -1. */
static long rss_kib_of(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static long fd_count_of(long pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/fd", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static double server_cpu_seconds(void) {
    if (!n_server_pids) return -1;
    double sum = 0;
    for (int i = 0; i < n_server_pids; i++) {
        double v = cpu_seconds_of(server_pids[i]);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

static long server_rss_kib(void) {
    if (!n_server_pids) return -1;
    long sum = 0;
    for (int i = 0; i < n_server_pids; i++) {
        long v = rss_kib_of(server_pids[i]);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

static long server_fd_count(void) {
    if (!n_server_pids) return -1;
    long sum = 0;
    for (int i = 0; i < n_server_pids; i++) {
        long v = fd_count_of(server_pids[i]);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

/* ------------------------------------------------------------ histogram */
/* Log-bucketed: exact below 128 ns, then 64 sub-buckets per power of two
 * (relative error < 1.6%). Values in nanoseconds. */

#define H_SUB 64
#define H_MAXEXP 44
#define H_BUCKETS (128 + (H_MAXEXP - 7 + 1) * H_SUB)

typedef struct {
    uint64_t b[H_BUCKETS];
    uint64_t n, max, sum;
} hist_t;

static inline int h_index(uint64_t v) {
    if (v < 128) return (int)v;
    int k = 63 - __builtin_clzll(v);
    if (k > H_MAXEXP) return H_BUCKETS - 1;
    int shift = k - 6;
    return 128 + (k - 7) * H_SUB + (int)((v >> shift) - 64);
}

static uint64_t h_value(int i) { /* midpoint of bucket i */
    if (i < 128) return (uint64_t)i;
    int k = (i - 128) / H_SUB + 7, sub = (i - 128) % H_SUB + 64, shift = k - 6;
    return ((uint64_t)sub << shift) + ((1ull << shift) >> 1);
}

static inline void h_add(hist_t *h, uint64_t v) {
    h->b[h_index(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max) h->max = v;
}

static double h_pct_us(const hist_t *h, double pct) {
    if (!h->n) return 0;
    uint64_t want = (uint64_t)((double)h->n * pct / 100.0);
    if (want >= h->n) want = h->n - 1;
    uint64_t acc = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        acc += h->b[i];
        if (acc > want) {
            uint64_t v = h_value(i);
            if (v > h->max) v = h->max;
            return (double)v / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/* ---------------------------------------------------------- connections */

enum { C_CONNECTING, C_UP, C_CLOSED, C_UNSTARTED };

typedef struct {
    int fd;
    uint8_t state;
    bool want_out;  /* EPOLLOUT registered */
    /* FIFO of outstanding requests: send time and kind. */
    uint64_t *ts;
    uint8_t *kinds;
    uint32_t head, count;
    /* Bytes queued for sending. */
    uint8_t *out;
    uint32_t out_off, out_len, out_cap;
    /* Partial reply carried over between reads. */
    uint8_t *part;
    uint32_t part_len, part_cap;
} conn_t;

/* options */
static int opt_conns = 1, opt_depth = 1, opt_json = 0, opt_idle = 0, opt_idle_ping = 0;
static int opt_verify = 0, opt_accounts = 0, opt_storm = 0;
static const char *opt_resume_file = NULL;
static double opt_duration = 10, opt_warmup = 0, opt_connect_timeout = 10;
static long opt_total = 0, opt_nusers = 1000;
static int opt_port = 10000;
static const char *opt_mix = "ping";
static const char *opt_prefix = NULL;

/* mix */
static int n_kinds = 0;
static int mix_kind[MAX_KINDS];
static uint32_t mix_cum[MAX_KINDS], mix_total = 0;
static uint32_t custom_code = 7, custom_len = 0;
static uint8_t *custom_pkt = NULL;
static uint8_t *login_pkts = NULL; /* nusers x 104 */
static uint8_t *resume_pkts = NULL; /* n_resume x 96 */
static long n_resume = 0;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

/* state */
static conn_t *conns;
static int epfd;
static uint8_t *rbuf;
static bool measuring = false, sending = true;
static long sent_total = 0, replies_total = 0;
static uint64_t reg_counter = 0, login_counter = 0, resume_counter = 0;
static int live_conns = 0;

/* counters (measured window only, except connection events) */
static uint64_t m_reads = 0, m_writes = 0;
static uint64_t m_replies = 0, m_bad_reply = 0, m_unexpected = 0;
static uint64_t m_result[6]; /* result codes 0..4, other */
static uint64_t m_kind_replies[N_KINDS];
static uint64_t closed_by_server = 0, reset_by_server = 0, connect_failed = 0, send_errors = 0;
static hist_t hist;

static inline uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void parse_mix(const char *spec) {
    char *s = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n_kinds == MAX_KINDS) die("too many mix entries");
        int k;
        uint32_t w = 1;
        if (strncmp(tok, "custom:", 7) == 0) {
            /* custom:CODE:BODYLEN[:WEIGHT] */
            unsigned code = 0, len = 0, wt = 1;
            int got = sscanf(tok + 7, "%u:%u:%u", &code, &len, &wt);
            if (got < 2 || code > 65535 || len > MAX_PKG - 8) die("bad custom:CODE:BODYLEN");
            custom_code = code;
            custom_len = len;
            w = got == 3 ? wt : 1;
            k = K_CUSTOM;
        } else {
            char *colon = strchr(tok, ':');
            if (colon) {
                *colon = 0;
                w = (uint32_t)atoi(colon + 1);
            }
            if (!strcmp(tok, "ping")) k = K_PING;
            else if (!strcmp(tok, "register")) k = K_REGISTER;
            else if (!strcmp(tok, "login")) k = K_LOGIN;
            else if (!strcmp(tok, "resume")) k = K_RESUME;
            else die("unknown mix entry (ping, register, login, resume, custom:CODE:BODYLEN)");
        }
        if (w == 0) continue;
        mix_kind[n_kinds] = k;
        mix_total += w;
        mix_cum[n_kinds] = mix_total;
        n_kinds++;
    }
    free(s);
    if (!n_kinds) die("empty mix");
}

static void make_user(char *dst, size_t cap, const char *kind, uint64_t n) {
    snprintf(dst, cap, "%s%s%" PRIu64, opt_prefix, kind, n);
}

static void prepare_packets(void) {
    for (int i = 0; i < n_kinds; i++) {
        if (mix_kind[i] == K_CUSTOM) {
            custom_pkt = xmalloc(8 + custom_len);
            for (uint32_t j = 0; j < custom_len; j++) custom_pkt[8 + j] = (uint8_t)(j * 31 + 7);
            put16(custom_pkt, (uint16_t)(8 + custom_len));
            put16(custom_pkt + 2, (uint16_t)custom_code);
            put32(custom_pkt + 4, custom_len ? crc32_buf(custom_pkt + 8, custom_len) : 0);
        }
        if (mix_kind[i] == K_RESUME && !resume_pkts) {
            if (!opt_resume_file) die("-m resume needs -R FILE");
            FILE *f = fopen(opt_resume_file, "rb");
            if (!f) die("cannot open the -R file");
            fseek(f, 0, SEEK_END);
            long size = ftell(f);
            fseek(f, 0, SEEK_SET);
            n_resume = size / RESUME_BODY;
            if (n_resume < 1 || size % RESUME_BODY) die("-R file: not whole 88-byte records");
            resume_pkts = xmalloc((size_t)n_resume * (8 + RESUME_BODY));
            for (long u = 0; u < n_resume; u++) {
                uint8_t *p = resume_pkts + (size_t)u * (8 + RESUME_BODY);
                if (fread(p + 8, 1, RESUME_BODY, f) != RESUME_BODY) die("-R file: short read");
                put16(p, 8 + RESUME_BODY);
                put16(p + 2, 1);
                put32(p + 4, crc32_buf(p + 8, RESUME_BODY));
            }
            fclose(f);
        }
        if (mix_kind[i] == K_LOGIN && !login_pkts) {
            login_pkts = xmalloc((size_t)opt_nusers * 104);
            memset(login_pkts, 0, (size_t)opt_nusers * 104);
            for (long u = 0; u < opt_nusers; u++) {
                uint8_t *p = login_pkts + (size_t)u * 104;
                make_user((char *)p + 8, 56, "u", (uint64_t)u);
                p[8 + 55] = 0;
                memcpy(p + 8 + 56, "benchpass", 9);
                put16(p, 104);
                put16(p + 2, 6);
                put32(p + 4, crc32_buf(p + 8, 96));
            }
        }
    }
}

static int pick_kind(void) {
    if (n_kinds == 1) return mix_kind[0];
    uint32_t r = (uint32_t)(xorshift() % mix_total);
    for (int i = 0; i < n_kinds; i++)
        if (r < mix_cum[i]) return mix_kind[i];
    return mix_kind[n_kinds - 1];
}

static void out_reserve(conn_t *c, uint32_t extra) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + extra <= c->out_cap) return;
    if (c->out_off) { /* compact first */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + extra <= c->out_cap) return;
    }
    uint32_t cap = c->out_cap ? c->out_cap : 128;
    while (cap < c->out_len + extra) cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out) die("out of memory");
    c->out_cap = cap;
}

/* Queue one request on c, stamped with time t. */
static void queue_request(conn_t *c, uint64_t t) {
    int k = pick_kind();
    uint8_t *p;
    switch (k) {
    case K_PING:
        out_reserve(c, 8);
        p = c->out + c->out_len;
        memcpy(p, "\x00\x08\x00\x00\x00\x00\x00\x00", 8);
        c->out_len += 8;
        break;
    case K_REGISTER: {
        out_reserve(c, 108);
        p = c->out + c->out_len;
        memset(p, 0, 108);
        put16(p, 108);
        put16(p + 2, 5);
        put32(p + 8, 1); /* iType */
        make_user((char *)p + 12, 56, opt_accounts ? "u" : "r", reg_counter++);
        p[12 + 55] = 0;
        memcpy(p + 12 + 56, "benchpass", 9);
        put32(p + 4, crc32_buf(p + 8, 100));
        c->out_len += 108;
        break;
    }
    case K_LOGIN:
        out_reserve(c, 104);
        memcpy(c->out + c->out_len, login_pkts + (size_t)(login_counter++ % (uint64_t)opt_nusers) * 104,
               104);
        c->out_len += 104;
        break;
    case K_RESUME:
        out_reserve(c, 8 + RESUME_BODY);
        memcpy(c->out + c->out_len,
               resume_pkts + (size_t)(resume_counter++ % (uint64_t)n_resume) * (8 + RESUME_BODY),
               8 + RESUME_BODY);
        c->out_len += 8 + RESUME_BODY;
        break;
    default:
        out_reserve(c, 8 + custom_len);
        memcpy(c->out + c->out_len, custom_pkt, 8 + custom_len);
        c->out_len += 8 + custom_len;
        break;
    }
    uint32_t slot = (c->head + c->count) % (uint32_t)opt_depth;
    c->ts[slot] = t;
    c->kinds[slot] = (uint8_t)k;
    c->count++;
    sent_total++;
}

static bool may_send(void) { return sending && (!opt_total || sent_total < opt_total); }

static void close_conn(conn_t *c) {
    if (c->state == C_CLOSED || c->state == C_UNSTARTED) return;
    if (c->state == C_UP) live_conns--;
    close(c->fd);
    c->state = C_CLOSED;
    c->count = 0;
    c->out_off = c->out_len = 0;
}

/* Sockets are registered once, edge-triggered, for both directions (no
 * epoll_ctl per blocked send): want_out only records that a send hit EAGAIN,
 * so the next EPOLLOUT edge resumes it. */
static inline void set_events(conn_t *c, int idx, bool want_out) {
    (void)idx;
    c->want_out = want_out;
}

/* Send what is queued; register for EPOLLOUT if the socket is full. */
static void flush(conn_t *c, int idx) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            if (measuring) m_writes++;
            c->out_off += (uint32_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, idx, true);
            return;
        }
        if (errno == ECONNRESET || errno == EPIPE) reset_by_server++;
        else send_errors++;
        close_conn(c);
        return;
    }
    c->out_off = c->out_len = 0;
    set_events(c, idx, false);
}

static const uint16_t expect_code[N_KINDS] = {0, 5, 6, 0, 1};
static const uint16_t expect_len[N_KINDS] = {8, 108, 104, 0, 104};

/* Handle every whole reply in rbuf[0, avail); keep the partial tail. Returns
 * false if the connection was closed. */
static bool parse_replies(conn_t *c, size_t avail, uint64_t t) {
    size_t pos = 0;
    while (avail - pos >= 8) {
        const uint8_t *p = rbuf + pos;
        uint16_t plen = get16(p);
        if (plen < 8 || plen > MAX_PKG) { /* framing lost: give up on this connection */
            m_bad_reply++;
            close_conn(c);
            return false;
        }
        if (avail - pos < plen) break;
        uint16_t code = get16(p + 2);
        if (!c->count) {
            m_unexpected++;
        } else {
            uint32_t slot = c->head;
            int k = c->kinds[slot];
            uint64_t sent_at = c->ts[slot];
            c->head = (c->head + 1) % (uint32_t)opt_depth;
            c->count--;
            replies_total++;
            bool ok = k == K_CUSTOM || (code == expect_code[k] && plen == expect_len[k]);
            if (ok && opt_verify) {
                uint32_t want = plen > 8 ? crc32_buf(p + 8, plen - 8u) : 0;
                ok = want == get32(p + 4);
            }
            if (measuring) {
                m_replies++;
                m_kind_replies[k]++;
                if (!ok) m_bad_reply++;
                if (ok && (k == K_REGISTER || k == K_LOGIN || k == K_RESUME)) {
                    uint32_t r = get32(p + 8 + (k == K_REGISTER ? 0 : 56));
                    m_result[r < 5 ? r : 5]++;
                }
                h_add(&hist, t - sent_at);
            }
            if (may_send()) queue_request(c, t);
        }
        pos += plen;
    }
    uint32_t left = (uint32_t)(avail - pos);
    if (left) {
        if (c->part_cap < left) {
            c->part = realloc(c->part, MAX_PKG);
            if (!c->part) die("out of memory");
            c->part_cap = MAX_PKG;
        }
        memmove(c->part, rbuf + pos, left);
    }
    c->part_len = left;
    return true;
}

/* Edge-triggered: read until a short read (the socket is drained; more data
 * makes a new edge), handling every whole reply, then send what they queued
 * in one write. */
static void on_readable(conn_t *c, int idx) {
    for (;;) {
        uint32_t have = c->part_len;
        if (have) memcpy(rbuf, c->part, have);
        size_t space = RBUF_SIZE - have;
        ssize_t n = recv(c->fd, rbuf + have, space, 0);
        if (n == 0) {
            closed_by_server++;
            close_conn(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == ECONNRESET) reset_by_server++;
            else send_errors++;
            close_conn(c);
            return;
        }
        if (measuring) m_reads++;
        if (!parse_replies(c, have + (size_t)n, now_ns())) return;
        if ((size_t)n < space) break;
    }
    if (c->out_len > c->out_off && !c->want_out) flush(c, idx);
}

/* ------------------------------------------------------------ connecting */

static struct sockaddr_in server_addr;
static int next_to_start = 0, connecting_now = 0;

static void start_connect(int idx) {
    conn_t *c = &conns[idx];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_failed++;
        c->state = C_CLOSED;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    int r = connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (r < 0 && errno != EINPROGRESS) {
        connect_failed++;
        close(fd);
        c->state = C_CLOSED;
        return;
    }
    c->state = C_CONNECTING;
    connecting_now++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    c->want_out = false;
}

static void on_connected(conn_t *c, int idx) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    connecting_now--;
    if (err) {
        connect_failed++;
        close(c->fd);
        c->state = C_CLOSED;
        return;
    }
    c->state = C_UP;
    live_conns++;
    if (opt_storm && may_send()) { /* storm: the request leaves as soon as the connection is up */
        queue_request(c, now_ns());
        flush(c, idx);
    }
}

/* One epoll_wait round; timeout_ms bounded by the caller. */
static void poll_once(int timeout_ms) {
    static struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) {
        int idx = (int)evs[i].data.u32;
        conn_t *c = &conns[idx];
        uint32_t e = evs[i].events;
        if (c->state == C_CONNECTING) {
            on_connected(c, idx);
            continue;
        }
        if (c->state != C_UP) continue;
        if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, idx);
        if (c->state == C_UP && (e & EPOLLOUT)) flush(c, idx);
    }
}

static int ms_until(uint64_t deadline) {
    uint64_t t = now_ns();
    if (t >= deadline) return 0;
    uint64_t ms = (deadline - t + 999999) / 1000000;
    return ms > 100 ? 100 : (int)ms;
}

/* Open every connection, at most CONNECT_INFLIGHT in flight, bounded by -T. */
static void connect_all(void) {
    uint64_t deadline = now_ns() + (uint64_t)(opt_connect_timeout * 1e9);
    while (now_ns() < deadline) {
        while (next_to_start < opt_conns && connecting_now < CONNECT_INFLIGHT)
            start_connect(next_to_start++);
        if (next_to_start == opt_conns && connecting_now == 0) return;
        poll_once(ms_until(deadline));
    }
    for (int i = 0; i < opt_conns; i++)
        if (conns[i].state == C_CONNECTING) {
            close(conns[i].fd);
            conns[i].state = C_CLOSED;
            connect_failed++;
        }
    connect_failed += (uint64_t)(opt_conns - next_to_start);
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -p PORT [-c CONNS] [-d DEPTH] [-t SECONDS] [-w WARMUP] [-m MIX]\n"
            "               [-N TOTAL | -A] [-i [-P]] [-S PID,...] [-u PREFIX] [-n NUSERS]\n"
            "               [-T CONNECT_TIMEOUT] [-V] [-j]\n"
            "  -m MIX   ping | register | login | custom:CODE:BODYLEN | weighted list,\n"
            "           e.g. ping:80,login:20\n"
            "  -N TOTAL send exactly TOTAL requests then stop (bounded by -t)\n"
            "  -A       register the NUSERS accounts login uses (PREFIXu0..), then stop\n"
            "  -i       idle mode: hold -c connections open for -t seconds\n"
            "  -P       idle mode: then send one ping per connection and count answers\n"
            "  -s       storm mode: each connection sends one request once up; ends when all\n"
            "           are answered (or after -t s)\n"
            "  -R FILE  resume records (88 bytes: username[56] + token[32]) for -m resume\n"
            "  -S PIDS  measure the server's CPU (and RSS/fds in idle mode) from /proc,\n"
            "           summed over a comma-separated list of processes\n"
            "  -u       username prefix (register: PREFIXrN unique; login: PREFIXuK, K<NUSERS)\n"
            "  -V       verify the CRC of every reply\n"
            "  -j       print one JSON object\n"
            "Connects to 127.0.0.1 only.\n");
    exit(2);
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "p:c:d:t:w:m:N:AiPsR:S:u:n:T:Vjh")) != -1) {
        switch (opt) {
        case 'p': opt_port = atoi(optarg); break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_depth = atoi(optarg); break;
        case 't': opt_duration = atof(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'm': opt_mix = optarg; break;
        case 'N': opt_total = atol(optarg); break;
        case 'A': opt_accounts = 1; break;
        case 'i': opt_idle = 1; break;
        case 'P': opt_idle_ping = 1; break;
        case 's': opt_storm = 1; break;
        case 'R': opt_resume_file = optarg; break;
        case 'S': parse_pids(optarg); break;
        case 'u': opt_prefix = optarg; break;
        case 'n': opt_nusers = atol(optarg); break;
        case 'T': opt_connect_timeout = atof(optarg); break;
        case 'V': opt_verify = 1; break;
        case 'j': opt_json = 1; break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_conns < 1 || opt_depth < 1 || opt_duration <= 0 ||
        opt_warmup < 0 || opt_nusers < 1 || opt_total < 0 || opt_connect_timeout <= 0)
        usage();
    if (opt_idle || opt_storm) opt_depth = 1;
    if (opt_storm) opt_total = opt_conns; /* one request per connection */
    if (opt_accounts) { /* register exactly the names login uses */
        opt_mix = "register";
        opt_total = opt_nusers;
        opt_warmup = 0;
    }

    static char default_prefix[32];
    if (!opt_prefix) {
        snprintf(default_prefix, sizeof default_prefix, "lg%ld_", (long)getpid());
        opt_prefix = default_prefix;
    }
    if (strlen(opt_prefix) > 32) die("prefix too long (max 32)");
    signal(SIGPIPE, SIG_IGN);
    crc_init();
    parse_mix(opt_idle ? "ping" : opt_mix);
    prepare_packets();
    rng ^= (uint64_t)getpid() * 0x2545F4914F6CDD1Dull;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)opt_conns + 16 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: %d connections need more than RLIMIT_NOFILE %lu fds\n", opt_conns,
                (unsigned long)rl.rlim_cur);
        return 2;
    }

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
    server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, always */

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1 failed");
    rbuf = xmalloc(RBUF_SIZE);
    conns = xmalloc(sizeof(conn_t) * (size_t)opt_conns);
    memset(conns, 0, sizeof(conn_t) * (size_t)opt_conns);
    for (int i = 0; i < opt_conns; i++) {
        conns[i].state = C_UNSTARTED;
        conns[i].fd = -1;
        conns[i].ts = xmalloc(sizeof(uint64_t) * (size_t)opt_depth);
        conns[i].kinds = xmalloc((size_t)opt_depth);
    }

    long rss_before = server_rss_kib(), fds_before = server_fd_count();
    long rss_idle = -1, rss_after_ping = -1, fds_idle = -1;
    uint64_t idle_pinged = 0, idle_answered = 0, idle_closed_during_hold = 0;

    double cpu0 = 0, cpu1 = 0, scpu0 = 0, scpu1 = 0;
    uint64_t w0 = 0, w1 = 0;

    uint64_t t_connect0 = now_ns();
    if (opt_storm) { /* measured from the first connect */
        measuring = true;
        cpu0 = cpu_seconds_self();
        scpu0 = server_cpu_seconds();
    }
    connect_all();
    double connect_s = (double)(now_ns() - t_connect0) / 1e9;
    int connected = live_conns;
    fprintf(stderr, "loadgen: connected %d/%d in %.2fs\n", connected, opt_conns, connect_s);
    if (!connected) {
        fprintf(stderr, "loadgen: no connection could be opened to 127.0.0.1:%d\n", opt_port);
        return 1;
    }

    if (opt_storm) {
        w0 = t_connect0;
        uint64_t end = t_connect0 + (uint64_t)(opt_duration * 1e9);
        while (now_ns() < end && (long)replies_total < connected && live_conns)
            poll_once(ms_until(end));
        w1 = now_ns();
        cpu1 = cpu_seconds_self();
        scpu1 = server_cpu_seconds();
        measuring = false;
        sending = false;
    } else if (opt_idle) {
        /* Hold every connection open and idle for the duration. */
        sending = false;
        uint64_t kicks0 = closed_by_server + reset_by_server;
        uint64_t hold_end = now_ns() + (uint64_t)(opt_duration * 1e9);
        cpu0 = cpu_seconds_self();
        scpu0 = server_cpu_seconds();
        w0 = now_ns();
        while (now_ns() < hold_end) poll_once(ms_until(hold_end));
        idle_closed_during_hold = closed_by_server + reset_by_server - kicks0;
        rss_idle = server_rss_kib();
        fds_idle = server_fd_count();
        if (opt_idle_ping) {
            measuring = true;
            uint64_t t = now_ns();
            for (int i = 0; i < opt_conns; i++) {
                conn_t *c = &conns[i];
                if (c->state != C_UP) continue;
                queue_request(c, t);
                idle_pinged++;
                flush(c, i);
            }
            sending = false;
            uint64_t deadline = now_ns() + (uint64_t)(opt_connect_timeout * 1e9);
            while (now_ns() < deadline && m_replies < idle_pinged) poll_once(ms_until(deadline));
            idle_answered = m_replies;
            rss_after_ping = server_rss_kib();
        }
        w1 = now_ns();
        cpu1 = cpu_seconds_self();
        scpu1 = server_cpu_seconds();
    } else {
        uint64_t start = now_ns();
        uint64_t warm_end = start + (uint64_t)(opt_warmup * 1e9);
        uint64_t end = warm_end + (uint64_t)(opt_duration * 1e9);
        if (opt_total) warm_end = start; /* exact-count runs measure everything */
        measuring = warm_end == start;
        cpu0 = cpu_seconds_self();
        scpu0 = server_cpu_seconds();
        w0 = start;
        for (int i = 0; i < opt_conns; i++) {
            conn_t *c = &conns[i];
            if (c->state != C_UP) continue;
            for (int d = 0; d < opt_depth && may_send(); d++) queue_request(c, start);
            flush(c, i);
        }
        for (;;) {
            uint64_t t = now_ns();
            if (!measuring && t >= warm_end) {
                measuring = true;
                cpu0 = cpu_seconds_self();
                scpu0 = server_cpu_seconds();
                w0 = t;
            }
            if (t >= end) break;
            if (opt_total && replies_total >= opt_total) break;
            if (!live_conns) break;
            poll_once(ms_until(measuring ? end : warm_end));
        }
        w1 = now_ns();
        cpu1 = cpu_seconds_self();
        scpu1 = server_cpu_seconds();
        measuring = false;
        sending = false;
    }

    double wall = (double)(w1 - w0) / 1e9;
    if (wall <= 0) wall = 1e-9;
    double rps = opt_idle ? 0 : (double)m_replies / wall;
    double lg_cpu = (cpu1 - cpu0) / wall * 100.0;
    double srv_cpu = (scpu0 >= 0 && scpu1 >= 0) ? (scpu1 - scpu0) / wall * 100.0 : -1;
    uint64_t kicks = closed_by_server + reset_by_server;
    uint64_t errors = kicks + connect_failed + send_errors + m_bad_reply + m_unexpected;
    double p50 = h_pct_us(&hist, 50), p99 = h_pct_us(&hist, 99), p999 = h_pct_us(&hist, 99.9);
    double mean = hist.n ? (double)hist.sum / (double)hist.n / 1000.0 : 0;
    double maxl = (double)hist.max / 1000.0;

    if (opt_json) {
        printf("{\"mode\":\"%s\",\"port\":%d,\"connections\":%d,\"connected\":%d,\"depth\":%d,"
               "\"mix\":\"%s\",\"warmup_s\":%.3f,\"duration_s\":%.3f,\"connect_s\":%.3f,"
               "\"requests\":%" PRIu64 ",\"rps\":%.1f,"
               "\"latency_us\":{\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"mean\":%.2f,\"max\":%.2f},"
               "\"by_kind\":{\"ping\":%" PRIu64 ",\"register\":%" PRIu64 ",\"login\":%" PRIu64
               ",\"custom\":%" PRIu64 ",\"resume\":%" PRIu64 "},"
               "\"result_codes\":{\"0\":%" PRIu64 ",\"1\":%" PRIu64 ",\"2\":%" PRIu64 ",\"3\":%" PRIu64
               ",\"4\":%" PRIu64 ",\"other\":%" PRIu64 "},"
               "\"errors\":%" PRIu64 ",\"kicks\":%" PRIu64 ",\"closed_by_server\":%" PRIu64
               ",\"reset_by_server\":%" PRIu64 ",\"connect_failed\":%" PRIu64 ",\"send_errors\":%" PRIu64
               ",\"bad_replies\":%" PRIu64 ",\"unexpected_replies\":%" PRIu64 ","
               "\"loadgen_cpu_pct\":%.1f,\"server_cpu_pct\":%.1f,"
               "\"loadgen_cpu_s\":%.3f,\"server_cpu_s\":%.3f,\"reads\":%" PRIu64 ",\"writes\":%" PRIu64 ",\"replies_per_read\":%.2f",
               opt_idle ? "idle" : (opt_storm ? "storm" : (opt_total ? "count" : "load")), opt_port, opt_conns, connected,
               opt_depth, opt_idle ? "ping" : opt_mix, opt_idle ? 0.0 : opt_warmup, wall, connect_s,
               m_replies, rps, p50, p99, p999, mean, maxl, m_kind_replies[0], m_kind_replies[1],
               m_kind_replies[2], m_kind_replies[3], m_kind_replies[4], m_result[0], m_result[1], m_result[2],
               m_result[3], m_result[4], m_result[5], errors, kicks, closed_by_server,
               reset_by_server, connect_failed, send_errors, m_bad_reply, m_unexpected, lg_cpu,
               srv_cpu, cpu1 - cpu0, srv_cpu >= 0 ? scpu1 - scpu0 : -1.0, m_reads, m_writes, m_reads ? (double)m_replies / (double)m_reads : 0.0);
        if (opt_idle)
            printf(",\"idle\":{\"hold_s\":%.3f,\"closed_during_hold\":%" PRIu64 ",\"pinged\":%" PRIu64
                   ",\"answered\":%" PRIu64 ",\"server_rss_kib_before\":%ld,"
                   "\"server_rss_kib_idle\":%ld,\"server_rss_kib_after_ping\":%ld,"
                   "\"server_fds_before\":%ld,\"server_fds_idle\":%ld}",
                   opt_duration, idle_closed_during_hold, idle_pinged, idle_answered, rss_before,
                   rss_idle, rss_after_ping, fds_before, fds_idle);
        printf("}\n");
    } else {
        printf("%s  %d conns (%d up) x depth %d  mix %s\n", opt_idle ? "idle" : "load", opt_conns,
               connected, opt_depth, opt_idle ? "ping" : opt_mix);
        if (!opt_idle)
            printf("  %.0f req/s  (%" PRIu64 " replies in %.2fs)\n", rps, m_replies, wall);
        printf("  latency us: p50 %.1f  p99 %.1f  p99.9 %.1f  mean %.1f  max %.1f\n", p50, p99, p999,
               mean, maxl);
        printf("  errors %" PRIu64 ": kicks %" PRIu64 " (closed %" PRIu64 ", reset %" PRIu64
               "), connect failed %" PRIu64 ", bad replies %" PRIu64 ", unexpected %" PRIu64 "\n",
               errors, kicks, closed_by_server, reset_by_server, connect_failed, m_bad_reply,
               m_unexpected);
        if (m_kind_replies[1] || m_kind_replies[2] || m_kind_replies[4])
            printf("  result codes: 0:%" PRIu64 " 1:%" PRIu64 " 2:%" PRIu64 " 3:%" PRIu64 " 4:%" PRIu64
                   " other:%" PRIu64 "\n",
                   m_result[0], m_result[1], m_result[2], m_result[3], m_result[4], m_result[5]);
        printf("  reads %" PRIu64 " (%.2f replies each), writes %" PRIu64 "\n", m_reads,
               m_reads ? (double)m_replies / (double)m_reads : 0.0, m_writes);
        printf("  loadgen cpu %.1f%% of a core", lg_cpu);
        if (srv_cpu >= 0) printf(", server cpu %.1f%%", srv_cpu);
        printf("\n");
        if (opt_idle)
            printf("  idle: closed during hold %" PRIu64 ", pinged %" PRIu64 ", answered %" PRIu64
                   "; server RSS KiB before %ld, idle %ld, after ping %ld; fds %ld -> %ld\n",
                   idle_closed_during_hold, idle_pinged, idle_answered, rss_before, rss_idle,
                   rss_after_ping, fds_before, fds_idle);
    }
    fflush(stdout);
    for (int i = 0; i < opt_conns; i++) close_conn(&conns[i]);
    return 0;
}
