/*
 * hot_standby — an OpenClovis-style hot-standby pair over one checkpoint.
 *
 *   hot_standby active  NAME   writes update 1, 2, 3 ... each into its own
 *                              section and prints "ack N" once
 *                              clCkptSectionCreate returned CL_OK
 *   hot_standby standby NAME   follows the active through
 *                              clCkptImmediateConsumptionRegister, its
 *                              callbacks dispatched when the selection
 *                              object polls readable; when its standard
 *                              input ends (the active is gone) it takes
 *                              over: reads back every update, prints
 *                              "have N N N ..." and writes the next one.
 *
 * The servers are CKPT_SERVERS (or the embedded default address).
 */
#define _GNU_SOURCE
#include <clCkptApi.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_UPDATES 20000

static void fail(const char *what, ClRcT rc)
{
    fprintf(stderr, "hot_standby: %s failed: rc 0x%x\n", what, rc);
    exit(1);
}

static ClNameT checkpoint_name(const char *text)
{
    ClNameT name;
    memset(&name, 0, sizeof name);
    name.length = (ClUint16T)strlen(text);
    memcpy(name.value, text, name.length);
    return name;
}

static ClCkptSvcHdlT initialize(void)
{
    ClCkptSvcHdlT svc;
    ClVersionT version = {'B', 1, 1};
    ClRcT rc = clCkptInitialize(&svc, NULL, &version);
    if (rc != CL_OK) {
        fail("clCkptInitialize", rc);
    }
    return svc;
}

static ClCkptHdlT open_checkpoint(ClCkptSvcHdlT svc, const ClNameT *name)
{
    ClCkptCheckpointCreationAttributesT attributes;
    attributes.creationFlags = CL_CKPT_WR_ALL_REPLICAS | CL_CKPT_DISTRIBUTED;
    attributes.checkpointSize = (ClSizeT)MAX_UPDATES * 32;
    attributes.retentionDuration = CL_TIME_END;
    attributes.maxSections = MAX_UPDATES;
    attributes.maxSectionSize = 32;
    attributes.maxSectionIdSize = 16;
    ClCkptHdlT handle;
    ClRcT rc = clCkptCheckpointOpen(svc, name, &attributes,
                                    CL_CKPT_CHECKPOINT_CREATE | CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE,
                                    CL_TIME_END, &handle);
    if (rc != CL_OK) {
        fail("clCkptCheckpointOpen", rc);
    }
    return handle;
}

static ClRcT write_update(ClCkptHdlT handle, int n)
{
    char id[16], data[32];
    snprintf(id, sizeof id, "u%d", n);
    int size = snprintf(data, sizeof data, "update %d", n);
    ClCkptSectionIdT section = {(ClUint16T)strlen(id), (ClUint8T *)id};
    ClCkptSectionCreationAttributesT create = {&section, CL_TIME_END};
    return clCkptSectionCreate(handle, &create, (const ClUint8T *)data, (ClSizeT)size);
}

static int active(const ClNameT *name)
{
    ClCkptSvcHdlT svc = initialize();
    ClCkptHdlT handle = open_checkpoint(svc, name);
    for (int n = 1; n <= MAX_UPDATES; n++) {
        ClRcT rc = write_update(handle, n);
        if (rc != CL_OK) {
            fail("clCkptSectionCreate", rc);
        }
        printf("ack %d\n", n);
        fflush(stdout);
    }
    clCkptCheckpointClose(handle);
    clCkptFinalize(svc);
    return 0;
}

static int notified;
static int notified_max;

static ClRcT on_update(ClCkptHdlT handle, ClNameT *name, ClCkptIOVectorElementT *vector,
                       ClUint32T count, ClPtrT cookie)
{
    (void)handle;
    (void)name;
    (void)cookie;
    for (ClUint32T i = 0; i < count; i++) {
        char data[40] = {0};
        ClSizeT size = vector[i].dataSize < sizeof data - 1 ? vector[i].dataSize : sizeof data - 1;
        if (vector[i].dataBuffer != NULL) {
            memcpy(data, vector[i].dataBuffer, size);
        }
        int n = 0;
        if (sscanf(data, "update %d", &n) == 1 && n > notified_max) {
            notified_max = n;
        }
        notified++;
    }
    return CL_OK;
}

static int standby(const ClNameT *name)
{
    ClCkptSvcHdlT svc = initialize();
    ClCkptHdlT handle = open_checkpoint(svc, name);
    ClRcT rc = clCkptImmediateConsumptionRegister(handle, on_update, NULL);
    if (rc != CL_OK) {
        fail("clCkptImmediateConsumptionRegister", rc);
    }
    ClSelectionObjectT selection;
    rc = clCkptSelectionObjectGet(svc, &selection);
    if (rc != CL_OK) {
        fail("clCkptSelectionObjectGet", rc);
    }
    printf("standby ready\n");
    fflush(stdout);

    /* Follow the active until standard input ends. */
    for (;;) {
        struct pollfd fds[2] = {{(int)selection, POLLIN, 0}, {0, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            continue;
        }
        if (fds[0].revents & POLLIN) {
            rc = clCkptDispatch(svc, CL_DISPATCH_ALL);
            if (rc != CL_OK) {
                fail("clCkptDispatch", rc);
            }
        }
        if (fds[1].revents & (POLLIN | POLLHUP)) {
            char line[64];
            if (fgets(line, sizeof line, stdin) == NULL) {
                break;
            }
        }
    }

    /* Take over: what the checkpoint holds is the state. A DISTRIBUTED
     * checkpoint is read from this node's own replica, which may not yet
     * hold an update the active wrote just before it died and never saw
     * acknowledged; the active replica does, and refuses our next update
     * with ALREADY_EXIST. Then read again: the replica catches up. */
    clCkptDispatch(svc, CL_DISPATCH_ALL);
    static char have[MAX_UPDATES * 8];
    int last = 0;
    for (int attempt = 0;; attempt++) {
        ClHandleT iteration;
        rc = clCkptSectionIterationInitialize(handle, CL_CKPT_SECTIONS_ANY, 0, &iteration);
        if (rc != CL_OK) {
            fail("clCkptSectionIterationInitialize", rc);
        }
        size_t used = 0;
        have[0] = '\0';
        last = 0;
        ClCkptSectionDescriptorT descriptor;
        while ((rc = clCkptSectionIterationNext(iteration, &descriptor)) == CL_OK) {
            char buffer[40] = {0};
            ClCkptIOVectorElementT element;
            memset(&element, 0, sizeof element);
            element.sectionId = descriptor.sectionId;
            element.dataBuffer = buffer;
            element.dataSize = sizeof buffer - 1;
            ClUint32T bad;
            ClRcT read = clCkptCheckpointRead(handle, &element, 1, &bad);
            if (read != CL_OK) {
                fail("clCkptCheckpointRead", read);
            }
            int n = 0;
            if (sscanf(buffer, "update %d", &n) == 1) {
                if (used + 16 < sizeof have) {
                    used += (size_t)snprintf(have + used, sizeof have - used, " %d", n);
                }
                if (n > last) {
                    last = n;
                }
            }
            clHeapFree(descriptor.sectionId.id);
        }
        if (CL_GET_ERROR_CODE(rc) != CL_CKPT_ERR_NO_SECTIONS) {
            fail("clCkptSectionIterationNext", rc);
        }
        clCkptSectionIterationFinalize(iteration);
        rc = write_update(handle, last + 1);
        if (CL_GET_ERROR_CODE(rc) == CL_ERR_ALREADY_EXIST && attempt < 100) {
            usleep(100 * 1000);
            continue;
        }
        if (rc != CL_OK) {
            fail("clCkptSectionCreate (as the new active)", rc);
        }
        break;
    }
    printf("have%s\n", have);
    printf("notified %d max %d\n", notified, notified_max);
    printf("active now, wrote %d\n", last + 1);
    clCkptCheckpointClose(handle);
    clCkptFinalize(svc);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "active") != 0 && strcmp(argv[1], "standby") != 0)) {
        fprintf(stderr, "usage: hot_standby active|standby NAME\n");
        return 2;
    }
    ClNameT name = checkpoint_name(argv[2]);
    return strcmp(argv[1], "active") == 0 ? active(&name) : standby(&name);
}
