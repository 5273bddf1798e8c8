/*
 * send_floor: what one broadcast to N loopback TCP connections costs in C, with no
 * server framework at all: the floor under any fan-out on this machine.
 *
 * Opens N connections to itself on 127.0.0.1 (the accepted ends are the "members"),
 * then R rounds: one send() of a 40-byte packet to every member, timed, then every
 * client end read empty (untimed). Prints the wall and CPU time of one round (median
 * and worst), per delivery. On loopback the kernel does the receiving side of each
 * send in the sender's context, which is why a delivery costs microseconds, not the
 * few hundred nanoseconds of the system call itself.
 *
 * Build: cc -O2 -Wall -Wextra -o benchmarks/build/send_floor benchmarks/fanout/send_floor.c
 * Run:   benchmarks/build/send_floor 10000 20
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10000;
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    if (n < 1 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: send_floor [connections] [rounds <= 1000]\n");
        return 2;
    }
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    if ((rlim_t)(2 * n + 16) > lim.rlim_cur) {
        fprintf(stderr, "need %d fds, the limit is %lu\n", 2 * n + 16, (unsigned long)lim.rlim_cur);
        return 1;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096) ||
        getsockname(lfd, (struct sockaddr *)&addr, &len)) {
        perror("listen");
        return 1;
    }
    int *clients = calloc(n, sizeof(int)), *members = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) {
        clients[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(clients[i], (struct sockaddr *)&addr, sizeof addr)) {
            perror("connect");
            return 1;
        }
        members[i] = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (members[i] < 0) {
            perror("accept");
            return 1;
        }
        int one = 1;
        setsockopt(members[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char packet[40] = {0, 40};
    char sink[4096];
    double *wall = calloc(rounds, sizeof(double)), *cpu = calloc(rounds, sizeof(double));
    for (int r = 0; r < rounds; r++) {
        double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < n; i++) {
            if (send(members[i], packet, sizeof packet, 0) != (ssize_t)sizeof packet) {
                perror("send");
                return 1;
            }
        }
        wall[r] = clock_s(CLOCK_MONOTONIC) - w0;
        cpu[r] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        for (int i = 0; i < n; i++) {
            ssize_t got = 0;
            while (got < (ssize_t)sizeof packet) {
                ssize_t k = recv(clients[i], sink, sizeof sink, 0);
                if (k <= 0) {
                    perror("recv");
                    return 1;
                }
                got += k;
            }
        }
    }
    qsort(wall, rounds, sizeof(double), cmp);
    qsort(cpu, rounds, sizeof(double), cmp);
    printf("{\"connections\": %d, \"rounds\": %d, \"wall_ms_median\": %.1f, \"wall_ms_max\": %.1f, "
           "\"cpu_ms_median\": %.1f, \"cpu_us_per_delivery\": %.2f}\n",
           n, rounds, wall[rounds / 2] * 1e3, wall[rounds - 1] * 1e3, cpu[rounds / 2] * 1e3,
           cpu[rounds / 2] / n * 1e6);
    return 0;
}
