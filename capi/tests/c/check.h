/* Assertions for the C test programs of tests/capi.rs: each failure names
 * the file, line, call, the code it returned and the code expected, and
 * exits 1. A program that reaches its end prints "PASS". */
#ifndef CKPT_TEST_CHECK_H
#define CKPT_TEST_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPECT(call, want)                                                     \
    do {                                                                       \
        unsigned long long got_ = (unsigned long long)(call);                  \
        unsigned long long want_ = (unsigned long long)(want);                 \
        if (got_ != want_) {                                                   \
            fprintf(stderr, "%s:%d: %s returned 0x%llx, expected 0x%llx\n",    \
                    __FILE__, __LINE__, #call, got_, want_);                   \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/* Waits up to 10 s for fd to be readable; returns whether it is. */
static inline int readable_within(int fd, int timeout_ms)
{
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    int r = poll(&p, 1, timeout_ms);
    return r == 1 && (p.revents & POLLIN);
}

/* Whether fd is an open eventfd of this process. */
static inline int is_eventfd(int fd)
{
    char path[64], target[128];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0) {
        return 0;
    }
    target[n] = 0;
    return strstr(target, "eventfd") != NULL;
}

static inline long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long long monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

#endif
