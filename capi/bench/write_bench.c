/*
 * write_bench — the C library's counterpart of `ckpt-tool bench`: CLIENTS
 * threads, each with its own clCkptInitialize (its own connection), overwrite
 * their own section c<i> of one WR_ACTIVE_REPLICA checkpoint with SIZE-byte
 * values for SECONDS, one write in flight per client.
 *
 *   write_bench CLIENTS SECONDS SIZE CHECKPOINT
 *
 * Prints one line: clients, acknowledged writes, ops/s, p50 and p99 in µs.
 * The servers are CKPT_SERVERS (or the default address).
 */
#define _GNU_SOURCE
#include <clCkptApi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LATENCIES_MAX (1 << 20)

struct client {
    int index;
    ClNameT name;
    ClSizeT size;
    double seconds;
    long long ops;
    long long *latencies_ns;
    long long latencies;
    ClRcT error;
};

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static pthread_barrier_t start;

static void *run(void *arg)
{
    struct client *c = arg;
    ClCkptSvcHdlT svc;
    ClVersionT version = {'B', 1, 1};
    ClCkptHdlT h;
    char id[16];
    snprintf(id, sizeof id, "c%d", c->index);
    ClCkptSectionIdT section = {(ClUint16T)strlen(id), (ClUint8T *)id};
    ClCkptSectionCreationAttributesT create = {&section, CL_TIME_END};
    unsigned char *value = calloc(1, c->size);
    c->error = clCkptInitialize(&svc, NULL, &version);
    if (c->error == CL_OK) {
        c->error = clCkptCheckpointOpen(svc, &c->name, NULL,
                                        CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE, CL_TIME_END, &h);
    }
    if (c->error == CL_OK) {
        ClRcT rc = clCkptSectionCreate(h, &create, value, 0);
        if (rc != CL_OK && CL_GET_ERROR_CODE(rc) != CL_ERR_ALREADY_EXIST) {
            c->error = rc;
        }
    }
    pthread_barrier_wait(&start);
    if (c->error != CL_OK || value == NULL) {
        free(value);
        return NULL;
    }
    long long deadline = now_ns() + (long long)(c->seconds * 1e9);
    unsigned long long counter = 0;
    for (;;) {
        long long started = now_ns();
        if (started >= deadline) {
            break;
        }
        counter++;
        memcpy(value, &counter, sizeof counter < c->size ? sizeof counter : c->size);
        ClRcT rc = clCkptSectionOverwrite(h, &section, value, c->size);
        if (rc != CL_OK) {
            c->error = rc;
            break;
        }
        long long took = now_ns() - started;
        if (c->latencies < LATENCIES_MAX) {
            c->latencies_ns[c->latencies++] = took;
        }
        c->ops++;
    }
    free(value);
    clCkptCheckpointClose(h);
    clCkptFinalize(svc);
    return NULL;
}

static int compare(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: write_bench CLIENTS SECONDS SIZE CHECKPOINT\n");
        return 2;
    }
    int clients = atoi(argv[1]);
    double seconds = atof(argv[2]);
    ClSizeT size = (ClSizeT)atoll(argv[3]);
    const char *text = argv[4];
    if (clients < 1 || seconds <= 0 || size < 8 || strlen(text) > CL_MAX_NAME_LENGTH) {
        fprintf(stderr, "write_bench: bad arguments\n");
        return 2;
    }
    ClNameT name;
    memset(&name, 0, sizeof name);
    name.length = (ClUint16T)strlen(text);
    memcpy(name.value, text, name.length);

    /* Create the checkpoint as ckpt-tool bench does (mode active). */
    ClCkptSvcHdlT svc;
    ClVersionT version = {'B', 1, 1};
    ClCkptHdlT h;
    ClUint32T sections = clients < 2 ? 2 : (ClUint32T)clients;
    ClCkptCheckpointCreationAttributesT attributes = {
        CL_CKPT_WR_ACTIVE_REPLICA, sections * size, CL_TIME_END, sections, size, 4096};
    ClRcT rc = clCkptInitialize(&svc, NULL, &version);
    if (rc == CL_OK) {
        rc = clCkptCheckpointOpen(svc, &name, &attributes,
                                  CL_CKPT_CHECKPOINT_CREATE | CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE,
                                  CL_TIME_END, &h);
    }
    if (rc != CL_OK) {
        fprintf(stderr, "write_bench: cannot open %s: 0x%x\n", text, rc);
        return 1;
    }

    struct client *all = calloc((size_t)clients, sizeof *all);
    pthread_t *threads = calloc((size_t)clients, sizeof *threads);
    pthread_barrier_init(&start, NULL, (unsigned)clients + 1);
    for (int i = 0; i < clients; i++) {
        all[i].index = i;
        all[i].name = name;
        all[i].size = size;
        all[i].seconds = seconds;
        all[i].latencies_ns = malloc(sizeof(long long) * LATENCIES_MAX);
        pthread_create(&threads[i], NULL, run, &all[i]);
    }
    pthread_barrier_wait(&start);
    long long began = now_ns();
    long long ops = 0, count = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(threads[i], NULL);
        ops += all[i].ops;
        count += all[i].latencies;
        if (all[i].error != CL_OK) {
            fprintf(stderr, "write_bench: client %d failed: 0x%x\n", i, all[i].error);
            return 1;
        }
    }
    double elapsed = (double)(now_ns() - began) / 1e9;
    long long *latencies = malloc(sizeof(long long) * (size_t)(count > 0 ? count : 1));
    long long at = 0;
    for (int i = 0; i < clients; i++) {
        memcpy(latencies + at, all[i].latencies_ns, sizeof(long long) * (size_t)all[i].latencies);
        at += all[i].latencies;
        free(all[i].latencies_ns);
    }
    qsort(latencies, (size_t)count, sizeof *latencies, compare);
    double p50 = count ? latencies[count / 2] / 1e3 : 0;
    double p99 = count ? latencies[(count * 99) / 100] / 1e3 : 0;
    printf("clients %d ops %lld elapsed_s %.2f ops_per_s %.1f p50_us %.1f p99_us %.1f\n", clients, ops,
           elapsed, ops / elapsed, p50, p99);
    free(latencies);
    free(all);
    free(threads);
    clCkptCheckpointClose(h);
    clCkptFinalize(svc);
    return 0;
}
