/*
 * receiver: N connections that only read pushes, for the fan-out benchmark.
 *
 * Opens -c connections to 127.0.0.1:-p (-p given twice: alternating between the two
 * ports), then reads. Every packet's body starts with
 * the publisher's CLOCK_MONOTONIC time in ns (u64, big-endian); the receive time
 * minus it is the delivery latency. Packets in the -w warm-up seconds are not counted;
 * the next -t seconds are. -S PID: that process's CPU time (/proc/PID/stat) over the
 * measured window (-S given several times: their sum). Prints one JSON object. Every phase is bounded in time.
 *
 * Build: cc -O2 -Wall -Wextra -o benchmarks/build/fanout_receiver benchmarks/fanout/receiver.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUCKETS 100000 /* 10 µs buckets up to 1 s; above goes in the last */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double proc_cpu(int pid) {
    if (pid <= 0) return 0;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state(3) ... utime is field 14, stime 15 */
    int field = 2;
    for (char *q = p + 1; *q && field < 15; q++) {
        if (*q == ' ') {
            field++;
            if (field == 14) ut = strtoul(q + 1, NULL, 10);
            if (field == 15) st = strtoul(q + 1, NULL, 10);
        }
    }
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static double cpu_of(int *pids, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        double used = proc_cpu(pids[i]);
        if (used < 0) return -1;
        total += used;
    }
    return total;
}

typedef struct {
    int fd;
    size_t have;
    unsigned char buf[65536];
} conn_t;

static long hist[BUCKETS + 1];

static double percentile(long total, double q) {
    long want = (long)(total * q);
    long seen = 0;
    for (int i = 0; i <= BUCKETS; i++) {
        seen += hist[i];
        if (seen > want) return (i + 1) * 10e-6;
    }
    return BUCKETS * 10e-6;
}

int main(int argc, char **argv) {
    int ports[2] = {10000, 0}, nports = 0, count = 100, pids[16], npids = 0;
    double warm = 2, measure = 5, connect_timeout = 30;
    int opt;
    while ((opt = getopt(argc, argv, "p:c:w:t:S:T:")) != -1) {
        switch (opt) {
        case 'p': if (nports < 2) ports[nports++] = atoi(optarg); break;
        case 'c': count = atoi(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 't': measure = atof(optarg); break;
        case 'S': if (npids < 16) pids[npids++] = atoi(optarg); break;
        case 'T': connect_timeout = atof(optarg); break;
        default: fprintf(stderr, "usage: %s -p port -c conns -w warm -t secs [-S pid]\n", argv[0]); return 2;
        }
    }
    int ep = epoll_create1(0);
    conn_t *conns = calloc(count, sizeof *conns);
    if (nports == 0) nports = 1;
    struct sockaddr_in addrs[2];
    for (int k = 0; k < nports; k++) {
        addrs[k] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(ports[k])};
        inet_pton(AF_INET, "127.0.0.1", &addrs[k].sin_addr);
    }
    double deadline = now_s() + connect_timeout;
    for (int i = 0; i < count; i++) {
        for (;;) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) { perror("socket"); return 1; }
            struct sockaddr_in *addr = &addrs[i % nports];
            if (connect(fd, (struct sockaddr *)addr, sizeof *addr) == 0) {
                conns[i].fd = fd;
                break;
            }
            close(fd);
            if (now_s() > deadline) { fprintf(stderr, "connect timed out at %d\n", i); return 1; }
            usleep(1000);
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    double connected_at = now_s();
    double start = connected_at + warm, end = start + measure;
    double cpu0 = -1, cpu1 = -1;
    long delivered = 0, closed = 0, bad = 0;
    struct epoll_event events[1024];
    for (;;) {
        double t = now_s();
        if (cpu0 < 0 && t >= start) cpu0 = cpu_of(pids, npids);
        if (t >= end) break;
        int n = epoll_wait(ep, events, 1024, 10);
        uint64_t received = now_ns();
        int counting = t >= start;
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            ssize_t got = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                closed++;
                continue;
            }
            c->have += got;
            size_t pos = 0;
            while (c->have - pos >= 8) {
                unsigned len = (c->buf[pos] << 8) | c->buf[pos + 1];
                if (len < 8) { bad++; pos = c->have; break; }
                if (c->have - pos < len) break;
                if (len >= 16 && counting) {
                    uint64_t sent = 0;
                    for (int b = 0; b < 8; b++) sent = (sent << 8) | c->buf[pos + 8 + b];
                    long bucket = received > sent ? (long)((received - sent) / 10000) : 0;
                    if (bucket > BUCKETS) bucket = BUCKETS;
                    hist[bucket]++;
                    delivered++;
                }
                pos += len;
            }
            memmove(c->buf, c->buf + pos, c->have - pos);
            c->have -= pos;
        }
    }
    cpu1 = cpu_of(pids, npids);
    double cpu = (cpu0 >= 0 && cpu1 >= 0) ? cpu1 - cpu0 : -1;
    printf("{\"connections\": %d, \"seconds\": %.3f, \"delivered\": %ld, \"per_second\": %.0f, "
           "\"server_cpu\": %.3f, \"per_cpu_second\": %.0f, \"p50\": %.6f, \"p99\": %.6f, "
           "\"max\": %.6f, \"closed\": %ld, \"bad\": %ld}\n",
           count, measure, delivered, delivered / measure, cpu,
           cpu > 0 ? delivered / cpu : 0, percentile(delivered, 0.5), percentile(delivered, 0.99),
           percentile(delivered, 0.999999), closed, bad);
    return 0;
}
