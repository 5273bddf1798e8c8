/* webload: the webbench pattern, one HTTP/1.0 request per connection, many clients.
 *
 *   webload -p PORT [-c CLIENTS] [-t SECONDS] [-w WARMUP] [-r PATH] [-S PID,...] [-j]
 *
 * Each of CLIENTS clients loops: connect to 127.0.0.1:PORT, send
 * "GET PATH HTTP/1.0\r\n\r\n", read until the server closes, check the reply (status
 * 200, a Content-Length and exactly that many body bytes), close, connect again.
 * One thread, one epoll set (level-triggered, each socket registered once), so
 * thousands of clients cost one process. Requests are counted in the measured window
 * (after WARMUP seconds); a failure is a refused or reset connection, a reply that is
 * not 200, or a body that does not match its Content-Length. -S reads the servers'
 * CPU time from /proc at the window's edges. -j prints one JSON object.
 *
 * Load only ever goes to 127.0.0.1 and the whole run is bounded by WARMUP + SECONDS.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, READING };

typedef struct {
    int fd;
    int state;
    double started;
    size_t got;     /* bytes received */
    size_t head;    /* bytes of the head we kept (up to sizeof buf) */
    char buf[512];  /* the start of the reply: status line and headers */
} client_t;

static int port, nclients = 1000;
static double seconds = 10, warmup = 1;
static const char *path = "/index.html";
static char request[1024];
static size_t request_len;
static struct sockaddr_in addr;
static int ep;
static client_t *clients;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* counters: [0] warm-up, [1] measured window */
static long done_ok[2], failed[2], refused[2], reset_[2], bad_reply[2], addr_busy[2];
static int window; /* 0 warm-up, 1 measured */
static double *lat;
static size_t nlat, caplat;

static double server_cpu_s(const char *pids) {
    if (!pids) return 0;
    double total = 0;
    long tick = sysconf(_SC_CLK_TCK);
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", pids);
    for (char *p = strtok(copy, ","); p; p = strtok(NULL, ",")) {
        char fn[64], line[4096];
        snprintf(fn, sizeof fn, "/proc/%s/stat", p);
        FILE *f = fopen(fn, "r");
        if (!f) continue;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = 0;
        char *r = strrchr(line, ')');
        if (!r) continue;
        unsigned long ut = 0, st = 0;
        /* after ")": state is field 3; utime 14, stime 15 */
        if (sscanf(r + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            total += (double)(ut + st) / tick;
    }
    return total;
}

static void start(client_t *c);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void finish(client_t *c, int outcome) {
    /* outcome: 0 ok, 1 refused, 2 reset, 3 bad reply, 4 no local address */
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (outcome == 0) {
        done_ok[window]++;
        if (window == 1) {
            if (nlat == caplat) {
                caplat = caplat ? caplat * 2 : 1 << 16;
                lat = realloc(lat, caplat * sizeof *lat);
            }
            lat[nlat++] = (now() - c->started) * 1e6;
        }
    } else {
        failed[window]++;
        if (outcome == 1) refused[window]++;
        if (outcome == 2) reset_[window]++;
        if (outcome == 3) bad_reply[window]++;
        if (outcome == 4) addr_busy[window]++;
    }
}

static void start(client_t *c) {
    c->got = c->head = 0;
    c->started = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(2);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        failed[window]++;
        if (e == EADDRNOTAVAIL) addr_busy[window]++;
        else refused[window]++;
        return;  /* retried by the main loop */
    }
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

/* The reply is complete at EOF: check status 200 and the body against Content-Length. */
static int check_reply(client_t *c) {
    c->buf[c->head < sizeof c->buf ? c->head : sizeof c->buf - 1] = 0;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0 || strncmp(c->buf + 8, " 200", 4) != 0) return 3;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return 3;
    size_t head_len = (size_t)(end - c->buf) + 4;
    long length = -1;
    for (char *line = strstr(c->buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Content-Length:", 15) == 0) length = atol(line + 17);
    }
    if (length < 0 || c->got != head_len + (size_t)length) return 3;
    return 0;
}

static void on_event(client_t *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            finish(c, err == ECONNREFUSED ? 1 : 2);
            return;
        }
        if (send(c->fd, request, request_len, MSG_NOSIGNAL) != (ssize_t)request_len) {
            finish(c, 2);
            return;
        }
        c->state = READING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    (void)events;
    static char sink[1 << 16];
    for (;;) {
        ssize_t n;
        if (c->head < sizeof c->buf - 1) {
            n = recv(c->fd, c->buf + c->head, sizeof c->buf - 1 - c->head, 0);
            if (n > 0) c->head += (size_t)n;
        } else {
            n = recv(c->fd, sink, sizeof sink, 0);
        }
        if (n > 0) {
            c->got += (size_t)n;
            continue;
        }
        if (n == 0) {
            finish(c, check_reply(c));
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        finish(c, 2);
        return;
    }
}

int main(int argc, char **argv) {
    const char *pids = NULL;
    int json = 0, opt;
    while ((opt = getopt(argc, argv, "p:c:t:w:r:S:j")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': nclients = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'r': path = optarg; break;
        case 'S': pids = optarg; break;
        case 'j': json = 1; break;
        default:
            fprintf(stderr, "usage: webload -p PORT [-c CLIENTS] [-t S] [-w S] [-r PATH] [-S PIDS] [-j]\n");
            return 2;
        }
    }
    if (!port || nclients < 1) {
        fprintf(stderr, "webload: -p PORT is required\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nclients + 16 > rl.rlim_cur) {
        fprintf(stderr, "webload: %d clients need more than RLIMIT_NOFILE %lu\n", nclients,
                (unsigned long)rl.rlim_cur);
        return 2;
    }
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: webload\r\n\r\n", path);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    ep = epoll_create1(EPOLL_CLOEXEC);
    clients = calloc((size_t)nclients, sizeof *clients);
    struct epoll_event *events = calloc((size_t)nclients, sizeof *events);

    double t0 = now(), t_window = t0 + warmup, t_end = t_window + seconds;
    double cpu0 = 0, win0 = 0;
    struct rusage ru0, ru1;
    for (int i = 0; i < nclients; i++) start(&clients[i]);
    for (;;) {
        double t = now();
        if (window == 0 && t >= t_window) {
            window = 1;
            win0 = t;
            cpu0 = server_cpu_s(pids);
            getrusage(RUSAGE_SELF, &ru0);
        }
        if (t >= t_end) break;
        int n = epoll_wait(ep, events, nclients, 50);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
        for (int i = 0; i < nclients; i++)
            if (clients[i].fd < 0) start(&clients[i]);
    }
    double wall = now() - win0;
    double cpu = server_cpu_s(pids) - cpu0;
    getrusage(RUSAGE_SELF, &ru1);
    double own = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    for (int i = 0; i < nclients; i++)
        if (clients[i].fd >= 0) close(clients[i].fd);

    qsort(lat, nlat, sizeof *lat, cmp_double);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0;
    double rps = done_ok[1] / wall;
    if (json) {
        printf("{\"clients\": %d, \"seconds\": %.3f, \"requests\": %ld, \"rps\": %.1f, "
               "\"failed\": %ld, \"refused\": %ld, \"reset\": %ld, \"bad_reply\": %ld, "
               "\"no_local_address\": %ld, \"warmup_requests\": %ld, \"warmup_failed\": %ld, "
               "\"latency_us\": {\"p50\": %.1f, \"p99\": %.1f}, \"server_cpu_s\": %.3f, "
               "\"server_cpu_pct\": %.1f, \"loadgen_cpu_pct\": %.1f}\n",
               nclients, wall, done_ok[1], rps, failed[1], refused[1], reset_[1], bad_reply[1],
               addr_busy[1], done_ok[0], failed[0], p50, p99, cpu, cpu / wall * 100, own / wall * 100);
    } else {
        printf("%d clients, %.1f s: %ld requests (%.0f/s), %ld failed (refused %ld, reset %ld, "
               "bad %ld, no local address %ld); p50 %.0f us, p99 %.0f us; server CPU %.1f%%, "
               "webload CPU %.1f%%\n",
               nclients, wall, done_ok[1], rps, failed[1], refused[1], reset_[1], bad_reply[1],
               addr_busy[1], p50, p99, cpu / wall * 100, own / wall * 100);
    }
    return 0;
}
