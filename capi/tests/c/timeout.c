/* Timeouts are honoured. CKPT_SERVERS points at a proxy that holds every
 * chunk for DELAY_MS (argv[1]) in each direction, so no answer can come
 * within 50 ms: a call with a 50 ms timeout must return TIMEOUT after about
 * 50 ms, and the same call without a limit must succeed. */
#define _GNU_SOURCE
#include <clCkptApi.h>
#include <saCkpt.h>

#include "check.h"

#define LIMIT_NS (50LL * 1000000LL)

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    long long delay_ms = atoll(argv[1]);
    CHECK(delay_ms >= 200);
    char text[64];
    snprintf(text, sizeof text, "capi-timeout-%d", (int)getpid());
    ClNameT name;
    memset(&name, 0, sizeof name);
    name.length = (ClUint16T)strlen(text);
    memcpy(name.value, text, name.length);
    ClCkptCheckpointCreationAttributesT attrs = {CL_CKPT_WR_ACTIVE_REPLICA, 1024, CL_TIME_END, 1, 1024, 0};
    ClCkptOpenFlagsT rwc = CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE | CL_CKPT_CHECKPOINT_CREATE;

    ClCkptSvcHdlT svc;
    ClVersionT version = {'B', 1, 1};
    EXPECT(clCkptInitialize(&svc, NULL, &version), CL_OK);
    ClCkptHdlT h;
    long long start = monotonic_ms();
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rwc, LIMIT_NS, &h), CL_RC(CL_CID_CKPT, CL_ERR_TIMEOUT));
    long long took = monotonic_ms() - start;
    CHECK(took >= 45 && took < delay_ms);
    start = monotonic_ms();
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rwc, CL_TIME_END, &h), CL_OK);
    CHECK(monotonic_ms() - start >= 2 * delay_ms);
    start = monotonic_ms();
    EXPECT(clCkptCheckpointSynchronize(h, LIMIT_NS), CL_RC(CL_CID_CKPT, CL_ERR_TIMEOUT));
    took = monotonic_ms() - start;
    CHECK(took >= 45 && took < delay_ms);
    EXPECT(clCkptCheckpointSynchronize(h, 0), CL_OK);
    EXPECT(clCkptFinalize(svc), CL_OK);

    SaCkptHandleT sa;
    SaVersionT sa_version = {'B', 2, 2};
    EXPECT(saCkptInitialize(&sa, NULL, &sa_version), SA_AIS_OK);
    SaNameT sa_name;
    memcpy(&sa_name, &name, sizeof sa_name);
    SaCkptCheckpointHandleT sh;
    start = monotonic_ms();
    EXPECT(saCkptCheckpointOpen(sa, &sa_name, NULL, SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE, LIMIT_NS, &sh), SA_AIS_ERR_TIMEOUT);
    took = monotonic_ms() - start;
    CHECK(took >= 45 && took < delay_ms);
    EXPECT(saCkptCheckpointOpen(sa, &sa_name, NULL, SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE, SA_TIME_END, &sh), SA_AIS_OK);
    start = monotonic_ms();
    EXPECT(saCkptCheckpointSynchronize(sh, LIMIT_NS), SA_AIS_ERR_TIMEOUT);
    took = monotonic_ms() - start;
    CHECK(took >= 45 && took < delay_ms);
    EXPECT(saCkptCheckpointUnlink(sa, &sa_name), SA_AIS_OK);
    EXPECT(saCkptFinalize(sa), SA_AIS_OK);
    puts("PASS");
    return 0;
}
