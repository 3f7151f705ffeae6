/* Callbacks may call the library: the open callback writes through the
 * handle it receives, the notification callback closes its own handle and
 * finalizes its own service, all from inside clCkptDispatch. */
#define _GNU_SOURCE
#include <clCkptApi.h>

#include "check.h"

static ClCkptSvcHdlT svc;
static int opened, notified;
static ClRcT close_rc = 0xdead, finalize_rc = 0xdead;

static void on_open(ClInvocationT invocation, ClCkptHdlT handle, ClRcT error)
{
    CHECK(invocation == 7 && error == CL_OK);
    ClCkptSectionIdT section = CL_CKPT_DEFAULT_SECTION_ID;
    EXPECT(clCkptSectionOverwrite(handle, &section, "from callback", 13), CL_OK);
    /* And a nested dispatch finds nothing left to run. */
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_OK);
    opened = 1;
}

static ClRcT on_update(ClCkptHdlT handle, ClNameT *name, ClCkptIOVectorElementT *vector,
                       ClUint32T count, ClPtrT cookie)
{
    (void)name;
    (void)vector;
    (void)count;
    (void)cookie;
    close_rc = clCkptCheckpointClose(handle);
    finalize_rc = clCkptFinalize(svc);
    notified++;
    return CL_OK;
}

int main(void)
{
    char text[64];
    snprintf(text, sizeof text, "capi-reentrant-%d", (int)getpid());
    ClNameT name;
    memset(&name, 0, sizeof name);
    name.length = (ClUint16T)strlen(text);
    memcpy(name.value, text, name.length);
    ClCkptCheckpointCreationAttributesT attrs = {CL_CKPT_WR_ACTIVE_REPLICA, 64, CL_TIME_END, 1, 64, 0};
    ClCkptOpenFlagsT rwc = CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE | CL_CKPT_CHECKPOINT_CREATE;
    ClCkptCallbacksT callbacks = {on_open, NULL};
    ClVersionT version = {'B', 1, 1};
    EXPECT(clCkptInitialize(&svc, &callbacks, &version), CL_OK);
    ClSelectionObjectT selection;
    EXPECT(clCkptSelectionObjectGet(svc, &selection), CL_OK);
    EXPECT(clCkptCheckpointOpenAsync(svc, 7, &name, &attrs, rwc), CL_OK);
    CHECK(readable_within((int)selection, 10000));
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ONE), CL_OK);
    CHECK(opened == 1);
    /* No synchronize callback was given. */
    ClCkptHdlT h;
    EXPECT(clCkptCheckpointOpen(svc, &name, NULL, CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE, CL_TIME_END, &h), CL_OK);
    EXPECT(clCkptCheckpointSynchronizeAsync(h, 8), CL_RC(CL_CID_CKPT, CL_ERR_NO_CALLBACK));
    EXPECT(clCkptImmediateConsumptionRegister(h, on_update, NULL), CL_OK);

    /* A second service writes; the first one's callback ends it. */
    ClCkptSvcHdlT writer;
    ClVersionT v2 = {'B', 1, 1};
    EXPECT(clCkptInitialize(&writer, NULL, &v2), CL_OK);
    ClCkptHdlT w;
    EXPECT(clCkptCheckpointOpen(writer, &name, NULL, CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE, CL_TIME_END, &w), CL_OK);
    char buffer[32];
    ClCkptIOVectorElementT read;
    memset(&read, 0, sizeof read);
    read.dataBuffer = buffer;
    read.dataSize = sizeof buffer;
    EXPECT(clCkptCheckpointRead(w, &read, 1, NULL), CL_OK);
    CHECK(read.readSize == 13 && memcmp(buffer, "from callback", 13) == 0);
    ClCkptSectionIdT section = CL_CKPT_DEFAULT_SECTION_ID;
    EXPECT(clCkptSectionOverwrite(w, &section, "second", 6), CL_OK);
    CHECK(readable_within((int)selection, 10000));
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_OK);
    CHECK(notified == 1);
    EXPECT(close_rc, CL_OK);
    EXPECT(finalize_rc, CL_OK);
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_RC(CL_CID_CKPT, CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointDelete(writer, &name), CL_OK);
    EXPECT(clCkptFinalize(writer), CL_OK);
    puts("PASS");
    return 0;
}
