/* Every function of saCkpt.h against a real server, with valid and invalid
 * arguments, and the callbacks driven through poll() on the selection
 * object. Run by tests/capi.rs with CKPT_SERVERS set. */
#define _GNU_SOURCE
#include <pthread.h>
#include <saCkpt.h>

#include "check.h"

static SaNameT make_name(const char *text)
{
    SaNameT name;
    memset(&name, 0, sizeof name);
    name.length = (SaUint16T)strlen(text);
    memcpy(name.value, text, name.length);
    return name;
}

static SaCkptSectionIdT sid(const char *text)
{
    SaCkptSectionIdT id;
    id.idLen = (SaUint16T)strlen(text);
    id.id = (SaUint8T *)text;
    return id;
}

static int open_calls, sync_calls;
static SaInvocationT last_invocation;
static SaCkptCheckpointHandleT opened;
static SaAisErrorT last_error;

static void on_open(SaInvocationT invocation, SaCkptCheckpointHandleT handle, SaAisErrorT error)
{
    open_calls++;
    last_invocation = invocation;
    opened = handle;
    last_error = error;
}

static void on_sync(SaInvocationT invocation, SaAisErrorT error)
{
    sync_calls++;
    last_invocation = invocation;
    last_error = error;
}

static SaCkptHandleT blocking;
static SaAisErrorT blocking_rc = (SaAisErrorT)0;

static void *dispatch_blocking(void *arg)
{
    (void)arg;
    blocking_rc = saCkptDispatch(blocking, SA_DISPATCH_BLOCKING);
    return NULL;
}

int main(void)
{
    char text[128];
    snprintf(text, sizeof text, "capi-sa-%d", (int)getpid());
    SaNameT name = make_name(text);
    SaCkptCallbacksT callbacks = {on_open, on_sync};
    SaCkptCheckpointCreationAttributesT attrs;
    attrs.creationFlags = SA_CKPT_WR_ACTIVE_REPLICA;
    attrs.checkpointSize = 64 * 1024;
    attrs.retentionDuration = SA_TIME_END;
    attrs.maxSections = 16;
    attrs.maxSectionSize = 4096;
    attrs.maxSectionIdSize = 32;
    SaCkptCheckpointOpenFlagsT rwc = SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE | SA_CKPT_CHECKPOINT_CREATE;
    SaCkptCheckpointOpenFlagsT rw = SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE;

    /* saCkptInitialize */
    SaCkptHandleT svc = 0;
    SaVersionT version = {'B', 2, 2};
    EXPECT(saCkptInitialize(NULL, &callbacks, &version), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptInitialize(&svc, &callbacks, NULL), SA_AIS_ERR_INVALID_PARAM);
    SaVersionT future = {'B', 5, 1};
    EXPECT(saCkptInitialize(&svc, &callbacks, &future), SA_AIS_ERR_VERSION);
    CHECK(future.releaseCode == 'B' && future.majorVersion == 2 && future.minorVersion == 2);
    SaVersionT older = {'B', 1, 1};
    EXPECT(saCkptInitialize(&svc, &callbacks, &older), SA_AIS_OK);
    CHECK(older.majorVersion == 2);
    EXPECT(saCkptFinalize(svc), SA_AIS_OK);
    EXPECT(saCkptInitialize(&svc, &callbacks, &version), SA_AIS_OK);

    /* saCkptSelectionObjectGet, saCkptDispatch */
    SaSelectionObjectT selection;
    EXPECT(saCkptSelectionObjectGet(svc, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSelectionObjectGet(4242, &selection), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptSelectionObjectGet(svc, &selection), SA_AIS_OK);
    int fd = (int)selection;
    CHECK(is_eventfd(fd) && !readable_within(fd, 0));
    EXPECT(saCkptDispatch(svc, (SaDispatchFlagsT)0), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptDispatch(4242, SA_DISPATCH_ALL), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptDispatch(svc, SA_DISPATCH_ONE), SA_AIS_OK);

    /* saCkptCheckpointOpen */
    SaCkptCheckpointHandleT h;
    SaNameT too_long = make_name("x");
    too_long.length = 257;
    EXPECT(saCkptCheckpointOpen(svc, NULL, &attrs, rwc, SA_TIME_END, &h), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointOpen(svc, &name, &attrs, rwc, SA_TIME_END, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointOpen(svc, &too_long, &attrs, rwc, SA_TIME_END, &h), SA_AIS_ERR_NAME_TOO_LONG);
    EXPECT(saCkptCheckpointOpen(svc, &name, &attrs, rwc | 0x10, SA_TIME_END, &h), SA_AIS_ERR_BAD_FLAGS);
    EXPECT(saCkptCheckpointOpen(svc, &name, NULL, rwc, SA_TIME_END, &h), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointOpen(svc, &name, &attrs, rwc, -5, &h), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointOpen(svc, &name, &attrs, rwc, 0, &h), SA_AIS_ERR_TIMEOUT);
    EXPECT(saCkptCheckpointOpen(5151, &name, &attrs, rwc, SA_TIME_END, &h), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointOpen(svc, &name, NULL, rw, SA_TIME_END, &h), SA_AIS_ERR_NOT_EXIST);
    EXPECT(saCkptCheckpointOpen(svc, &name, &attrs, rwc, 10 * SA_TIME_ONE_SECOND, &h), SA_AIS_OK);
    SaCkptCheckpointCreationAttributesT other = attrs;
    other.maxSectionSize = 8192;
    SaCkptCheckpointHandleT unused;
    EXPECT(saCkptCheckpointOpen(svc, &name, &other, rwc, SA_TIME_END, &unused), SA_AIS_ERR_EXIST);
    SaCkptCheckpointHandleT reader;
    EXPECT(saCkptCheckpointOpen(svc, &name, NULL, SA_CKPT_CHECKPOINT_READ, SA_TIME_END, &reader), SA_AIS_OK);

    /* saCkptSectionCreate with a generated id, saCkptSectionIdFree */
    SaCkptSectionIdT s1 = sid("s1");
    SaCkptSectionCreationAttributesT create = {&s1, SA_TIME_END};
    EXPECT(saCkptSectionCreate(h, NULL, "a", 1), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionCreate(7777, &create, "a", 1), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptSectionCreate(reader, &create, "a", 1), SA_AIS_ERR_ACCESS);
    EXPECT(saCkptSectionCreate(h, &create, NULL, 0), SA_AIS_OK);
    EXPECT(saCkptSectionCreate(h, &create, "a", 1), SA_AIS_ERR_EXIST);
    SaCkptSectionIdT generated = SA_CKPT_GENERATED_SECTION_ID;
    SaCkptSectionCreationAttributesT create_generated = {&generated, SA_TIME_END};
    EXPECT(saCkptSectionCreate(h, &create_generated, "g", 1), SA_AIS_OK);
    CHECK(generated.idLen > 0 && generated.id != NULL);

    /* saCkptSectionOverwrite, saCkptCheckpointWrite */
    SaCkptSectionIdT missing = sid("missing");
    EXPECT(saCkptSectionOverwrite(h, NULL, "x", 1), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionOverwrite(h, &missing, "x", 1), SA_AIS_ERR_NOT_EXIST);
    EXPECT(saCkptSectionOverwrite(reader, &s1, "x", 1), SA_AIS_ERR_ACCESS);
    EXPECT(saCkptSectionOverwrite(h, &s1, "hello", 5), SA_AIS_OK);
    SaCkptIOVectorElementT writes[2];
    memset(writes, 0, sizeof writes);
    writes[0].sectionId = s1;
    writes[0].dataBuffer = "J";
    writes[0].dataSize = 1;
    writes[1].sectionId = missing;
    writes[1].dataBuffer = "x";
    writes[1].dataSize = 1;
    SaUint32T bad = 99;
    EXPECT(saCkptCheckpointWrite(h, NULL, 1, &bad), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointWrite(h, writes, 2, &bad), SA_AIS_ERR_NOT_EXIST);
    CHECK(bad == 1);
    writes[1].sectionId = generated;
    writes[1].dataOffset = 5000;
    EXPECT(saCkptCheckpointWrite(h, writes, 2, &bad), SA_AIS_ERR_INVALID_PARAM);
    CHECK(bad == 1);
    writes[1].dataOffset = 1;
    EXPECT(saCkptCheckpointWrite(h, writes, 2, &bad), SA_AIS_OK);

    /* saCkptCheckpointRead with a library buffer, saCkptIOVectorElementDataFree */
    SaCkptIOVectorElementT reads[2];
    char buffer[8];
    memset(reads, 0, sizeof reads);
    reads[0].sectionId = s1;
    reads[0].dataBuffer = NULL;
    reads[1].sectionId = generated;
    reads[1].dataBuffer = buffer;
    reads[1].dataSize = 1; /* smaller than the section: readSize is what fits */
    EXPECT(saCkptCheckpointRead(h, NULL, 1, &bad), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointRead(h, reads, 2, &bad), SA_AIS_OK);
    CHECK(reads[0].dataBuffer != NULL && reads[0].readSize == 5);
    CHECK(memcmp(reads[0].dataBuffer, "Jello", 5) == 0);
    CHECK(reads[1].readSize == 1 && buffer[0] == 'g');
    EXPECT(saCkptIOVectorElementDataFree(h, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptIOVectorElementDataFree(8888, reads[0].dataBuffer), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptIOVectorElementDataFree(reader, reads[0].dataBuffer), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptIOVectorElementDataFree(h, buffer), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptIOVectorElementDataFree(h, reads[0].dataBuffer), SA_AIS_OK);
    EXPECT(saCkptIOVectorElementDataFree(h, reads[0].dataBuffer), SA_AIS_ERR_INVALID_PARAM);
    reads[0].sectionId = missing;
    reads[0].dataBuffer = buffer;
    reads[0].dataSize = sizeof buffer;
    EXPECT(saCkptCheckpointRead(h, reads, 1, &bad), SA_AIS_ERR_NOT_EXIST);
    CHECK(bad == 0);

    /* saCkptCheckpointStatusGet */
    SaCkptCheckpointDescriptorT status;
    EXPECT(saCkptCheckpointStatusGet(h, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointStatusGet(svc, &status), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointStatusGet(h, &status), SA_AIS_OK);
    CHECK(status.numberOfSections == 2 && status.memoryUsed == 5 + 2);
    CHECK(status.checkpointCreationAttributes.maxSectionIdSize == 32);

    /* saCkptSectionExpirationTimeSet */
    EXPECT(saCkptSectionExpirationTimeSet(h, NULL, SA_TIME_END), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionExpirationTimeSet(h, &missing, SA_TIME_END), SA_AIS_ERR_NOT_EXIST);
    EXPECT(saCkptSectionExpirationTimeSet(h, &s1, now_ns() - SA_TIME_ONE_SECOND), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionExpirationTimeSet(h, &generated, now_ns() + SA_TIME_ONE_HOUR), SA_AIS_OK);

    /* Iteration: the descriptor's id belongs to the library until the next call */
    SaCkptSectionIterationHandleT iteration;
    SaCkptSectionDescriptorT descriptor;
    EXPECT(saCkptSectionIterationInitialize(h, SA_CKPT_SECTIONS_ANY, 0, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionIterationInitialize(h, (SaCkptSectionsChosenT)0, 0, &iteration), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionIterationInitialize(9999, SA_CKPT_SECTIONS_ANY, 0, &iteration), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptSectionIterationInitialize(h, SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME, now_ns(), &iteration), SA_AIS_OK);
    EXPECT(saCkptSectionIterationNext(iteration, NULL), SA_AIS_ERR_INVALID_PARAM);
    int seen = 0;
    SaAisErrorT rc;
    while ((rc = saCkptSectionIterationNext(iteration, &descriptor)) == SA_AIS_OK) {
        CHECK(descriptor.sectionId.idLen > 0 && descriptor.sectionState == SA_CKPT_SECTION_VALID);
        seen++;
    }
    EXPECT(rc, SA_AIS_ERR_NO_SECTIONS);
    CHECK(seen == 2);
    EXPECT(saCkptSectionIterationFinalize(iteration), SA_AIS_OK);
    EXPECT(saCkptSectionIterationFinalize(iteration), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptSectionIterationNext(iteration, &descriptor), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptSectionIterationInitialize(h, SA_CKPT_SECTIONS_LEQ_EXPIRATION_TIME, now_ns() + SA_TIME_ONE_DAY, &iteration), SA_AIS_OK);
    EXPECT(saCkptSectionIterationNext(iteration, &descriptor), SA_AIS_OK);
    CHECK(descriptor.sectionId.idLen == generated.idLen);
    CHECK(memcmp(descriptor.sectionId.id, generated.id, generated.idLen) == 0);
    EXPECT(saCkptSectionIterationNext(iteration, &descriptor), SA_AIS_ERR_NO_SECTIONS);
    EXPECT(saCkptSectionIterationFinalize(iteration), SA_AIS_OK);

    /* saCkptCheckpointRetentionDurationSet, saCkptActiveReplicaSet, saCkptCheckpointSynchronize */
    EXPECT(saCkptCheckpointRetentionDurationSet(h, -1), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointRetentionDurationSet(1234, 0), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointRetentionDurationSet(h, SA_TIME_ONE_HOUR), SA_AIS_OK);
    EXPECT(saCkptActiveReplicaSet(h), SA_AIS_ERR_BAD_OPERATION);
    EXPECT(saCkptActiveReplicaSet(1234), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointSynchronize(h, SA_TIME_END), SA_AIS_OK);
    EXPECT(saCkptCheckpointSynchronize(h, 0), SA_AIS_ERR_TIMEOUT);
    EXPECT(saCkptCheckpointSynchronize(reader, SA_TIME_END), SA_AIS_ERR_ACCESS);
    EXPECT(saCkptCheckpointSynchronize(1234, SA_TIME_END), SA_AIS_ERR_BAD_HANDLE);

    /* Asynchronous calls through poll() */
    EXPECT(saCkptCheckpointOpenAsync(svc, 1, &name, NULL, rw | 0x100), SA_AIS_ERR_BAD_FLAGS);
    EXPECT(saCkptCheckpointOpenAsync(svc, 1, NULL, NULL, rw), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointOpenAsync(3131, 1, &name, NULL, rw), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointOpenAsync(svc, 21, &name, NULL, rw), SA_AIS_OK);
    CHECK(readable_within(fd, 10000));
    EXPECT(saCkptDispatch(svc, SA_DISPATCH_ALL), SA_AIS_OK);
    CHECK(open_calls == 1 && last_invocation == 21 && last_error == SA_AIS_OK && opened != 0);
    SaCkptCheckpointHandleT async_opened = opened;
    EXPECT(saCkptCheckpointSynchronizeAsync(opened, 22), SA_AIS_OK);
    EXPECT(saCkptCheckpointSynchronizeAsync(4321, 22), SA_AIS_ERR_BAD_HANDLE);
    CHECK(readable_within(fd, 10000));
    EXPECT(saCkptDispatch(svc, SA_DISPATCH_ONE), SA_AIS_OK);
    CHECK(sync_calls == 1 && last_invocation == 22 && last_error == SA_AIS_OK);
    CHECK(!readable_within(fd, 0));
    SaCkptHandleT no_callbacks;
    SaVersionT v2 = {'B', 2, 2};
    EXPECT(saCkptInitialize(&no_callbacks, NULL, &v2), SA_AIS_OK);
    EXPECT(saCkptCheckpointOpenAsync(no_callbacks, 1, &name, NULL, rw), SA_AIS_ERR_INIT);
    EXPECT(saCkptFinalize(no_callbacks), SA_AIS_OK);

    /* A blocking dispatch runs callbacks as they come, until Finalize. */
    SaVersionT v3 = {'B', 2, 2};
    EXPECT(saCkptInitialize(&blocking, &callbacks, &v3), SA_AIS_OK);
    pthread_t dispatcher;
    CHECK(pthread_create(&dispatcher, NULL, dispatch_blocking, NULL) == 0);
    EXPECT(saCkptCheckpointOpenAsync(blocking, 23, &name, NULL, rw), SA_AIS_OK);
    long long deadline = monotonic_ms() + 10000;
    while (__atomic_load_n(&open_calls, __ATOMIC_SEQ_CST) < 2 && monotonic_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling a condition the dispatcher thread sets */
    }
    CHECK(__atomic_load_n(&open_calls, __ATOMIC_SEQ_CST) == 2 && last_invocation == 23);
    EXPECT(saCkptFinalize(blocking), SA_AIS_OK);
    CHECK(pthread_join(dispatcher, NULL) == 0);
    EXPECT(blocking_rc, SA_AIS_OK);

    /* saCkptSectionDelete, saCkptSectionIdFree */
    EXPECT(saCkptSectionDelete(h, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionDelete(h, &missing), SA_AIS_ERR_NOT_EXIST);
    EXPECT(saCkptSectionDelete(h, &generated), SA_AIS_OK);
    EXPECT(saCkptSectionIdFree(h, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionIdFree(h, (SaUint8T *)buffer), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptSectionIdFree(h, generated.id), SA_AIS_OK);
    EXPECT(saCkptSectionIdFree(h, generated.id), SA_AIS_ERR_INVALID_PARAM);

    /* saCkptCheckpointClose, saCkptCheckpointUnlink, saCkptFinalize */
    /* The blocking service's checkpoint went with its Finalize. */
    EXPECT(saCkptCheckpointClose(opened), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointClose(async_opened), SA_AIS_OK);
    EXPECT(saCkptCheckpointClose(async_opened), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointClose(reader), SA_AIS_OK);
    SaNameT absent = make_name("capi-sa-absent");
    EXPECT(saCkptCheckpointUnlink(svc, NULL), SA_AIS_ERR_INVALID_PARAM);
    EXPECT(saCkptCheckpointUnlink(2222, &name), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptCheckpointUnlink(svc, &absent), SA_AIS_ERR_NOT_EXIST);
    EXPECT(saCkptCheckpointUnlink(svc, &name), SA_AIS_OK);
    EXPECT(saCkptCheckpointRetentionDurationSet(h, 1), SA_AIS_ERR_BAD_OPERATION);
    EXPECT(saCkptCheckpointClose(h), SA_AIS_OK);
    EXPECT(saCkptFinalize(svc), SA_AIS_OK);
    CHECK(!is_eventfd(fd));
    EXPECT(saCkptFinalize(svc), SA_AIS_ERR_BAD_HANDLE);
    EXPECT(saCkptDispatch(svc, SA_DISPATCH_ALL), SA_AIS_ERR_BAD_HANDLE);
    puts("PASS");
    return 0;
}
