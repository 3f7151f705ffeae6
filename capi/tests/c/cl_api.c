/* Every function of clCkptApi.h against a real server, with valid and
 * invalid arguments, and the callbacks driven through poll() on the
 * selection object. Run by tests/capi.rs with CKPT_SERVERS set. */
#define _GNU_SOURCE
#include <clCkptApi.h>
#include <pthread.h>
#include <stdatomic.h>

#include "check.h"

#define ERR(code) CL_RC(CL_CID_CKPT, (code))

static ClNameT make_name(const char *text)
{
    ClNameT name;
    memset(&name, 0, sizeof name);
    name.length = (ClUint16T)strlen(text);
    memcpy(name.value, text, name.length);
    return name;
}

static ClCkptSectionIdT sid(const char *text)
{
    ClCkptSectionIdT id;
    id.idLen = (ClUint16T)strlen(text);
    id.id = (ClUint8T *)text;
    return id;
}

/* What the callbacks saw. */
static int open_calls;
static ClInvocationT open_invocation;
static ClCkptHdlT open_handle;
static ClRcT open_error;
static int sync_calls;
static ClInvocationT sync_invocation;
static ClRcT sync_error;
static atomic_int notifications;
static int cookie_marker;
static char last_data[64];
static char last_section[64];
static char last_name[300];
static ClOffsetT last_offset;

static void on_open(ClInvocationT invocation, ClCkptHdlT handle, ClRcT error)
{
    open_calls++;
    open_invocation = invocation;
    open_handle = handle;
    open_error = error;
}

static void on_sync(ClInvocationT invocation, ClRcT error)
{
    sync_calls++;
    sync_invocation = invocation;
    sync_error = error;
}

static ClRcT on_update(ClCkptHdlT handle, ClNameT *name, ClCkptIOVectorElementT *vector,
                       ClUint32T count, ClPtrT cookie)
{
    (void)handle;
    CHECK(cookie == &cookie_marker);
    CHECK(name != NULL && name->length < sizeof last_name);
    memcpy(last_name, name->value, name->length);
    last_name[name->length] = 0;
    if (count > 0) {
        CHECK(vector != NULL);
        size_t n = vector[0].dataSize < sizeof last_data - 1 ? vector[0].dataSize : sizeof last_data - 1;
        memcpy(last_data, vector[0].dataBuffer, n);
        last_data[n] = 0;
        memcpy(last_section, vector[0].sectionId.id, vector[0].sectionId.idLen);
        last_section[vector[0].sectionId.idLen] = 0;
        last_offset = vector[0].dataOffset;
    }
    atomic_fetch_add(&notifications, 1);
    return CL_OK;
}

static const ClCkptCallbacksT callbacks = {on_open, on_sync};

static ClCkptCheckpointCreationAttributesT attributes(ClCkptCreationFlagsT flags)
{
    ClCkptCheckpointCreationAttributesT a;
    a.creationFlags = flags;
    a.checkpointSize = 64 * 1024;
    a.retentionDuration = CL_TIME_END;
    a.maxSections = 16;
    a.maxSectionSize = 4096;
    a.maxSectionIdSize = 32;
    return a;
}

/* Waits (up to 10 s) for the selection object, then dispatches. */
static void dispatch_when_readable(ClCkptSvcHdlT svc, int fd, ClDispatchFlagsT flags)
{
    CHECK(readable_within(fd, 10000));
    EXPECT(clCkptDispatch(svc, flags), CL_OK);
}

/* Threads writing their own sections of one handle at once. */
struct writer {
    ClCkptHdlT handle;
    int index;
};

static void *write_many(void *arg)
{
    struct writer *w = arg;
    char id[16], data[32];
    snprintf(id, sizeof id, "t%d", w->index);
    ClCkptSectionIdT section = sid(id);
    ClCkptSectionCreationAttributesT create = {&section, CL_TIME_END};
    EXPECT(clCkptSectionCreate(w->handle, &create, (const ClUint8T *)"", 0), CL_OK);
    for (int i = 0; i < 50; i++) {
        int n = snprintf(data, sizeof data, "%d:%d", w->index, i);
        EXPECT(clCkptSectionOverwrite(w->handle, &section, data, (ClSizeT)n), CL_OK);
    }
    return NULL;
}

static ClCkptSvcHdlT blocking_svc;
static ClRcT blocking_rc = 0xdead;

static void *dispatch_blocking(void *arg)
{
    (void)arg;
    blocking_rc = clCkptDispatch(blocking_svc, CL_DISPATCH_BLOCKING);
    return NULL;
}

int main(void)
{
    char text[128];
    snprintf(text, sizeof text, "capi-cl-%d", (int)getpid());
    ClNameT name = make_name(text);
    ClCkptCheckpointCreationAttributesT attrs = attributes(CL_CKPT_WR_ACTIVE_REPLICA);
    ClCkptOpenFlagsT rwc = CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE | CL_CKPT_CHECKPOINT_CREATE;
    ClCkptOpenFlagsT rw = CL_CKPT_CHECKPOINT_READ | CL_CKPT_CHECKPOINT_WRITE;

    /* clCkptInitialize */
    ClCkptSvcHdlT svc = 0;
    ClVersionT version = {'B', 1, 1};
    EXPECT(clCkptInitialize(NULL, &callbacks, &version), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptInitialize(&svc, &callbacks, NULL), ERR(CL_ERR_NULL_POINTER));
    ClVersionT wrong = {'A', 9, 9};
    EXPECT(clCkptInitialize(&svc, &callbacks, &wrong), ERR(CL_ERR_VERSION_MISMATCH));
    CHECK(wrong.releaseCode == 'B' && wrong.majorVersion == 1);
    EXPECT(clCkptInitialize(&svc, &callbacks, &version), CL_OK);
    CHECK(svc != 0 && version.releaseCode == 'B' && version.majorVersion == 1);

    /* clCkptSelectionObjectGet */
    ClSelectionObjectT selection = 0;
    EXPECT(clCkptSelectionObjectGet(svc, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSelectionObjectGet(12345, &selection), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSelectionObjectGet(svc, &selection), CL_OK);
    int fd = (int)selection;
    CHECK(is_eventfd(fd));
    CHECK(!readable_within(fd, 0));

    /* clCkptDispatch */
    EXPECT(clCkptDispatch(svc, (ClDispatchFlagsT)7), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptDispatch(777, CL_DISPATCH_ALL), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_OK);
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ONE), CL_OK);

    /* clCkptCheckpointOpen */
    ClCkptHdlT h = 0;
    ClNameT too_long = make_name("x");
    too_long.length = 300;
    ClNameT empty = make_name("");
    ClCkptCheckpointCreationAttributesT unknown_flag = attributes(CL_CKPT_WR_ACTIVE_REPLICA | 0x1000);
    ClCkptCheckpointCreationAttributesT two_modes = attributes(CL_CKPT_WR_ACTIVE_REPLICA | CL_CKPT_WR_ALL_REPLICAS);
    EXPECT(clCkptCheckpointOpen(svc, NULL, &attrs, rwc, CL_TIME_END, &h), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rwc, CL_TIME_END, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointOpen(svc, &too_long, &attrs, rwc, CL_TIME_END, &h), ERR(CL_ERR_NAME_TOO_LONG));
    EXPECT(clCkptCheckpointOpen(svc, &empty, &attrs, rwc, CL_TIME_END, &h), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rwc | 0x80, CL_TIME_END, &h), ERR(CL_ERR_BAD_FLAG));
    EXPECT(clCkptCheckpointOpen(svc, &name, NULL, rwc, CL_TIME_END, &h), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rw, CL_TIME_END, &h), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointOpen(svc, &name, &unknown_flag, rwc, CL_TIME_END, &h), ERR(CL_ERR_BAD_FLAG));
    EXPECT(clCkptCheckpointOpen(svc, &name, &two_modes, rwc, CL_TIME_END, &h), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointOpen(4242, &name, &attrs, rwc, CL_TIME_END, &h), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointOpen(svc, &name, NULL, rw, CL_TIME_END, &h), ERR(CL_ERR_NOT_EXIST));
    /* 0 and -1 mean "no limit", as SAFplus applications pass them. */
    EXPECT(clCkptCheckpointOpen(svc, &name, &attrs, rwc, 0, &h), CL_OK);
    CHECK(h != 0);
    ClCkptHdlT reader = 0;
    EXPECT(clCkptCheckpointOpen(svc, &name, NULL, CL_CKPT_CHECKPOINT_READ, (ClTimeT)-1, &reader), CL_OK);
    ClCkptCheckpointCreationAttributesT other = attrs;
    other.maxSectionSize = 8192;
    ClCkptHdlT unused;
    EXPECT(clCkptCheckpointOpen(svc, &name, &other, rwc, CL_TIME_END, &unused), ERR(CL_ERR_ALREADY_EXIST));

    /* clCkptCheckpointStatusGet */
    ClCkptCheckpointDescriptorT status;
    EXPECT(clCkptCheckpointStatusGet(h, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointStatusGet(999, &status), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointStatusGet(svc, &status), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointStatusGet(h, &status), CL_OK);
    CHECK(status.numberOfSections == 0 && status.memoryUsed == 0);
    CHECK(status.checkpointCreationAttributes.maxSections == 16);
    CHECK(status.checkpointCreationAttributes.creationFlags == CL_CKPT_WR_ACTIVE_REPLICA);
    CHECK(status.checkpointCreationAttributes.retentionDuration == (ClTimeT)CL_TIME_END);

    /* clCkptSectionCreate */
    ClCkptSectionIdT s1 = sid("s1");
    ClCkptSectionCreationAttributesT create = {&s1, CL_TIME_END};
    ClCkptSectionCreationAttributesT no_id = {NULL, CL_TIME_END};
    ClCkptSectionIdT broken = {5, NULL};
    ClCkptSectionCreationAttributesT broken_id = {&broken, CL_TIME_END};
    ClCkptSectionIdT long_id = sid("0123456789012345678901234567890123456789");
    ClCkptSectionCreationAttributesT too_long_id = {&long_id, CL_TIME_END};
    EXPECT(clCkptSectionCreate(h, NULL, (const ClUint8T *)"a", 1), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionCreate(h, &no_id, (const ClUint8T *)"a", 1), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionCreate(h, &create, NULL, 1), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionCreate(h, &broken_id, (const ClUint8T *)"a", 1), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionCreate(h, &too_long_id, (const ClUint8T *)"a", 1), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptSectionCreate(31337, &create, (const ClUint8T *)"a", 1), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSectionCreate(reader, &create, (const ClUint8T *)"a", 1), ERR(CL_ERR_OP_NOT_PERMITTED));
    EXPECT(clCkptSectionCreate(h, &create, (const ClUint8T *)"hello", 5), CL_OK);
    EXPECT(clCkptSectionCreate(h, &create, (const ClUint8T *)"hello", 5), ERR(CL_ERR_ALREADY_EXIST));
    ClCkptSectionIdT generated = CL_CKPT_GENERATED_SECTION_ID;
    ClCkptSectionCreationAttributesT create_generated = {&generated, CL_TIME_END};
    EXPECT(clCkptSectionCreate(h, &create_generated, (const ClUint8T *)"gen", 3), CL_OK);
    CHECK(generated.idLen > 0 && generated.id != NULL);

    /* clCkptSectionOverwrite */
    EXPECT(clCkptSectionOverwrite(h, NULL, "x", 1), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionOverwrite(h, &s1, NULL, 1), ERR(CL_ERR_NULL_POINTER));
    ClCkptSectionIdT missing = sid("missing");
    EXPECT(clCkptSectionOverwrite(h, &missing, "x", 1), ERR(CL_ERR_NOT_EXIST));
    EXPECT(clCkptSectionOverwrite(h, &s1, "x", 5000), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptSectionOverwrite(h, &s1, "world", 5), CL_OK);
    EXPECT(clCkptSectionOverwrite(h, &generated, "gen2", 4), CL_OK);

    /* clCkptCheckpointWrite: atomic, with the failing element's index */
    ClUint32T bad_index = 99;
    ClCkptIOVectorElementT writes[2];
    memset(writes, 0, sizeof writes);
    writes[0].sectionId = s1;
    writes[0].dataBuffer = "W";
    writes[0].dataSize = 1;
    writes[0].dataOffset = 0;
    writes[1].sectionId = missing;
    writes[1].dataBuffer = "Z";
    writes[1].dataSize = 1;
    EXPECT(clCkptCheckpointWrite(h, NULL, 1, &bad_index), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointWrite(h, writes, 2, &bad_index), ERR(CL_ERR_NOT_EXIST));
    CHECK(bad_index == 1);
    {
        /* Atomic: the valid first element was not applied either. */
        char check[8];
        ClCkptIOVectorElementT one;
        memset(&one, 0, sizeof one);
        one.sectionId = s1;
        one.dataBuffer = check;
        one.dataSize = sizeof check;
        EXPECT(clCkptCheckpointRead(h, &one, 1, NULL), CL_OK);
        CHECK(one.readSize == 5 && memcmp(check, "world", 5) == 0);
    }
    writes[1].sectionId = s1;
    writes[1].dataOffset = -1;
    EXPECT(clCkptCheckpointWrite(h, writes, 2, &bad_index), ERR(CL_ERR_INVALID_PARAMETER));
    CHECK(bad_index == 1);
    writes[1].dataOffset = 0;
    writes[1].dataBuffer = NULL;
    EXPECT(clCkptCheckpointWrite(h, writes, 2, NULL), ERR(CL_ERR_NULL_POINTER));
    writes[1].dataBuffer = "Z";
    writes[1].dataSize = 1ULL << 40; /* never read: over the bound of one update */
    EXPECT(clCkptCheckpointWrite(h, writes, 2, &bad_index), ERR(CL_ERR_TOO_BIG));
    CHECK(bad_index == 1);
    EXPECT(clCkptCheckpointWrite(h, writes, 5000, &bad_index), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointWrite(h, writes, 0, &bad_index), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointWrite(reader, writes, 1, &bad_index), ERR(CL_ERR_OP_NOT_PERMITTED));
    writes[1].dataSize = 1;
    writes[1].dataOffset = 7; /* past the end: grows the section, zero-filled */
    EXPECT(clCkptCheckpointWrite(h, writes, 2, &bad_index), CL_OK);

    /* clCkptCheckpointRead */
    char buffer[16];
    ClCkptIOVectorElementT reads[3];
    memset(reads, 0, sizeof reads);
    memset(buffer, '.', sizeof buffer);
    reads[0].sectionId = s1;
    reads[0].dataBuffer = buffer;
    reads[0].dataSize = sizeof buffer;
    reads[1].sectionId = s1;
    reads[1].dataBuffer = NULL; /* allocated by the library */
    reads[1].dataOffset = 1;
    reads[2].sectionId = s1;
    reads[2].dataBuffer = buffer;
    reads[2].dataSize = 4;
    reads[2].dataOffset = 100; /* past the end: nothing */
    EXPECT(clCkptCheckpointRead(h, NULL, 1, &bad_index), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointRead(h, reads, 3, &bad_index), CL_OK);
    CHECK(reads[0].readSize == 8 && memcmp(buffer, "World\0\0Z", 8) == 0);
    CHECK(reads[1].dataBuffer != NULL && reads[1].readSize == 7);
    CHECK(memcmp(reads[1].dataBuffer, "orld\0\0Z", 7) == 0);
    CHECK(reads[2].readSize == 0);
    clHeapFree(reads[1].dataBuffer);
    reads[1].sectionId = missing;
    reads[1].dataBuffer = NULL;
    EXPECT(clCkptCheckpointRead(h, reads, 2, &bad_index), ERR(CL_ERR_NOT_EXIST));
    CHECK(bad_index == 1 && reads[1].dataBuffer == NULL);
    reads[0].dataOffset = -5;
    EXPECT(clCkptCheckpointRead(h, reads, 1, &bad_index), ERR(CL_ERR_INVALID_PARAMETER));
    CHECK(bad_index == 0);
    reads[0].dataOffset = 0;
    EXPECT(clCkptCheckpointRead(h, reads, 1, NULL), CL_OK);
    EXPECT(clCkptCheckpointRead(4343, reads, 1, NULL), ERR(CL_ERR_INVALID_HANDLE));

    /* clCkptSectionExpirationTimeSet */
    EXPECT(clCkptSectionExpirationTimeSet(h, NULL, CL_TIME_END), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionExpirationTimeSet(h, &s1, now_ns() - 1000000000LL), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptSectionExpirationTimeSet(h, &missing, CL_TIME_END), ERR(CL_ERR_NOT_EXIST));
    EXPECT(clCkptSectionExpirationTimeSet(h, &generated, now_ns() + 3600LL * 1000000000LL), CL_OK);

    /* Iteration */
    ClHandleT iteration = 0;
    ClCkptSectionDescriptorT descriptor;
    EXPECT(clCkptSectionIterationInitialize(h, CL_CKPT_SECTIONS_ANY, 0, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionIterationInitialize(h, (ClCkptSectionsChosenT)9, 0, &iteration), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptSectionIterationInitialize(5555, CL_CKPT_SECTIONS_ANY, 0, &iteration), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSectionIterationInitialize(h, CL_CKPT_SECTIONS_FOREVER, 0, &iteration), CL_OK);
    EXPECT(clCkptSectionIterationNext(iteration, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionIterationNext(iteration, &descriptor), CL_OK);
    CHECK(descriptor.sectionId.idLen == 2 && memcmp(descriptor.sectionId.id, "s1", 2) == 0);
    CHECK(descriptor.sectionSize == 8 && descriptor.sectionState == CL_CKPT_SECTION_VALID);
    CHECK(descriptor.expirationTime == (ClTimeT)CL_TIME_END && descriptor.lastUpdate > 0);
    clHeapFree(descriptor.sectionId.id);
    ClRcT rc = clCkptSectionIterationNext(iteration, &descriptor);
    CHECK(CL_GET_ERROR_CODE(rc) == CL_CKPT_ERR_NO_SECTIONS);
    EXPECT(rc, CL_CKPT_RC(CL_CKPT_ERR_NO_SECTIONS));
    EXPECT(clCkptSectionIterationFinalize(iteration), CL_OK);
    EXPECT(clCkptSectionIterationFinalize(iteration), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSectionIterationNext(iteration, &descriptor), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSectionIterationInitialize(h, CL_CKPT_SECTIONS_ANY, 0, &iteration), CL_OK);
    int seen = 0;
    while ((rc = clCkptSectionIterationNext(iteration, &descriptor)) == CL_OK) {
        seen++;
        clHeapFree(descriptor.sectionId.id);
    }
    CHECK(CL_GET_ERROR_CODE(rc) == CL_CKPT_ERR_NO_SECTIONS && seen == 2);
    EXPECT(clCkptSectionIterationFinalize(iteration), CL_OK);

    /* checkpointSize is enforced. */
    {
        char small_text[160];
        snprintf(small_text, sizeof small_text, "%s-small", text);
        ClNameT small_name = make_name(small_text);
        ClCkptCheckpointCreationAttributesT small = attributes(CL_CKPT_WR_ALL_REPLICAS);
        small.checkpointSize = 10;
        small.maxSections = 2;
        small.maxSectionSize = 10;
        ClCkptHdlT hs;
        EXPECT(clCkptCheckpointOpen(svc, &small_name, &small, rwc, CL_TIME_END, &hs), CL_OK);
        ClCkptSectionIdT a = sid("a"), b = sid("b");
        ClCkptSectionCreationAttributesT ca = {&a, CL_TIME_END}, cb = {&b, CL_TIME_END};
        EXPECT(clCkptSectionCreate(hs, &ca, (const ClUint8T *)"123456", 6), CL_OK);
        EXPECT(clCkptSectionCreate(hs, &cb, (const ClUint8T *)"123456", 6), ERR(CL_ERR_NO_SPACE));
        EXPECT(clCkptSectionCreate(hs, &cb, (const ClUint8T *)"1234", 4), CL_OK);
        EXPECT(clCkptSectionOverwrite(hs, &b, "12345", 5), ERR(CL_ERR_NO_SPACE));
        EXPECT(clCkptCheckpointSynchronize(hs, CL_TIME_END), ERR(CL_ERR_BAD_OPERATION));
        EXPECT(clCkptCheckpointClose(hs), CL_OK);
        EXPECT(clCkptCheckpointDelete(svc, &small_name), CL_OK);
    }

    /* clCkptCheckpointRetentionDurationSet, clCkptActiveReplicaSet */
    EXPECT(clCkptCheckpointRetentionDurationSet(h, -1), ERR(CL_ERR_INVALID_PARAMETER));
    EXPECT(clCkptCheckpointRetentionDurationSet(6161, 1), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointRetentionDurationSet(h, 3600LL * 1000000000LL), CL_OK);
    EXPECT(clCkptActiveReplicaSet(h), ERR(CL_ERR_BAD_OPERATION));
    EXPECT(clCkptActiveReplicaSet(6161), ERR(CL_ERR_INVALID_HANDLE));
    char collocated_text[160];
    snprintf(collocated_text, sizeof collocated_text, "%s-collocated", text);
    ClNameT collocated_name = make_name(collocated_text);
    ClCkptCheckpointCreationAttributesT collocated = attributes(CL_CKPT_WR_ACTIVE_REPLICA | CL_CKPT_CHECKPOINT_COLLOCATED);
    ClCkptHdlT hc;
    EXPECT(clCkptCheckpointOpen(svc, &collocated_name, &collocated, rwc, CL_TIME_END, &hc), CL_OK);
    EXPECT(clCkptActiveReplicaSet(hc), CL_OK);
    EXPECT(clCkptCheckpointClose(hc), CL_OK);
    EXPECT(clCkptCheckpointDelete(svc, &collocated_name), CL_OK);

    /* clCkptCheckpointSynchronize */
    EXPECT(clCkptCheckpointSynchronize(h, CL_TIME_END), CL_OK);
    EXPECT(clCkptCheckpointSynchronize(h, 0), CL_OK);
    EXPECT(clCkptCheckpointSynchronize(reader, CL_TIME_END), ERR(CL_ERR_OP_NOT_PERMITTED));
    EXPECT(clCkptCheckpointSynchronize(7171, CL_TIME_END), ERR(CL_ERR_INVALID_HANDLE));

    /* clCkptCheckpointOpenAsync, through poll() and dispatch ONE */
    EXPECT(clCkptCheckpointOpenAsync(svc, 41, &name, NULL, rw | 0x40), ERR(CL_ERR_BAD_FLAG));
    EXPECT(clCkptCheckpointOpenAsync(svc, 41, NULL, NULL, rw), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointOpenAsync(svc, 41, &too_long, NULL, rw), ERR(CL_ERR_NAME_TOO_LONG));
    EXPECT(clCkptCheckpointOpenAsync(9191, 41, &name, NULL, rw), ERR(CL_ERR_INVALID_HANDLE));
    CHECK(!readable_within(fd, 0));
    EXPECT(clCkptCheckpointOpenAsync(svc, 42, &name, NULL, rw), CL_OK);
    dispatch_when_readable(svc, fd, CL_DISPATCH_ONE);
    CHECK(open_calls == 1 && open_invocation == 42 && open_error == CL_OK && open_handle != 0);
    ClCkptHdlT async_handle = open_handle;
    CHECK(!readable_within(fd, 0));
    ClNameT absent = make_name("capi-cl-absent");
    EXPECT(clCkptCheckpointOpenAsync(svc, 43, &absent, NULL, rw), CL_OK);
    dispatch_when_readable(svc, fd, CL_DISPATCH_ALL);
    CHECK(open_calls == 2 && open_invocation == 43 && open_error == ERR(CL_ERR_NOT_EXIST));

    /* clCkptCheckpointSynchronizeAsync */
    EXPECT(clCkptCheckpointSynchronizeAsync(8181, 44), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointSynchronizeAsync(async_handle, 44), CL_OK);
    dispatch_when_readable(svc, fd, CL_DISPATCH_ALL);
    CHECK(sync_calls == 1 && sync_invocation == 44 && sync_error == CL_OK);

    /* clCkptImmediateConsumptionRegister: updates through another handle */
    EXPECT(clCkptImmediateConsumptionRegister(async_handle, NULL, &cookie_marker), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptImmediateConsumptionRegister(8282, on_update, &cookie_marker), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptImmediateConsumptionRegister(async_handle, on_update, &cookie_marker), CL_OK);
    EXPECT(clCkptSectionOverwrite(h, &s1, "notified", 8), CL_OK);
    dispatch_when_readable(svc, fd, CL_DISPATCH_ALL);
    CHECK(atomic_load(&notifications) == 1);
    CHECK(strcmp(last_data, "notified") == 0 && strcmp(last_section, "s1") == 0);
    CHECK(strcmp(last_name, text) == 0);
    writes[0].dataBuffer = "abc";
    writes[0].dataSize = 3;
    writes[0].dataOffset = 2;
    EXPECT(clCkptCheckpointWrite(h, writes, 1, NULL), CL_OK);
    dispatch_when_readable(svc, fd, CL_DISPATCH_ONE);
    CHECK(atomic_load(&notifications) == 2 && strcmp(last_data, "abc") == 0 && last_offset == 2);
    CHECK(!readable_within(fd, 0));

    /* Many threads on one handle at once. */
    pthread_t threads[8];
    struct writer writers[8];
    for (int i = 0; i < 8; i++) {
        writers[i].handle = h;
        writers[i].index = i;
        CHECK(pthread_create(&threads[i], NULL, write_many, &writers[i]) == 0);
    }
    for (int i = 0; i < 8; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
    }
    for (int i = 0; i < 8; i++) {
        char id[16], want[32];
        snprintf(id, sizeof id, "t%d", i);
        snprintf(want, sizeof want, "%d:49", i);
        ClCkptIOVectorElementT one;
        memset(&one, 0, sizeof one);
        one.sectionId = sid(id);
        one.dataBuffer = buffer;
        one.dataSize = sizeof buffer;
        EXPECT(clCkptCheckpointRead(h, &one, 1, NULL), CL_OK);
        CHECK(one.readSize == strlen(want) && memcmp(buffer, want, one.readSize) == 0);
    }
    /* The notifications of those 8 creations and 400 overwrites. */
    long long deadline = monotonic_ms() + 10000;
    while (atomic_load(&notifications) < 2 + 8 + 400 && monotonic_ms() < deadline) {
        if (readable_within(fd, 1000)) {
            EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_OK);
        }
    }
    CHECK(atomic_load(&notifications) == 2 + 8 + 400);

    /* clCkptSectionDelete */
    EXPECT(clCkptSectionDelete(h, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptSectionDelete(h, &missing), ERR(CL_ERR_NOT_EXIST));
    EXPECT(clCkptSectionDelete(h, &generated), CL_OK);
    clHeapFree(generated.id);
    EXPECT(clCkptSectionDelete(reader, &s1), ERR(CL_ERR_OP_NOT_PERMITTED));

    /* Blocking dispatch on another thread ends with Finalize. */
    ClVersionT v2 = {'B', 1, 1};
    EXPECT(clCkptInitialize(&blocking_svc, &callbacks, &v2), CL_OK);
    ClCkptHdlT watched;
    EXPECT(clCkptCheckpointOpen(blocking_svc, &name, NULL, CL_CKPT_CHECKPOINT_READ, CL_TIME_END, &watched), CL_OK);
    EXPECT(clCkptImmediateConsumptionRegister(watched, on_update, &cookie_marker), CL_OK);
    pthread_t dispatcher;
    CHECK(pthread_create(&dispatcher, NULL, dispatch_blocking, NULL) == 0);
    int before = atomic_load(&notifications);
    EXPECT(clCkptSectionOverwrite(h, &s1, "blocking", 8), CL_OK);
    deadline = monotonic_ms() + 10000;
    while (atomic_load(&notifications) == before && monotonic_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling a condition set by the dispatcher thread */
    }
    CHECK(atomic_load(&notifications) == before + 1);
    EXPECT(clCkptFinalize(blocking_svc), CL_OK);
    CHECK(pthread_join(dispatcher, NULL) == 0);
    EXPECT(blocking_rc, CL_OK);
    EXPECT(clCkptCheckpointStatusGet(watched, &status), ERR(CL_ERR_INVALID_HANDLE));

    /* Finalize cancels pending callbacks and invalidates the selection object. */
    ClCkptSvcHdlT third;
    ClVersionT v3 = {'B', 1, 1};
    EXPECT(clCkptInitialize(&third, &callbacks, &v3), CL_OK);
    ClSelectionObjectT third_selection;
    EXPECT(clCkptSelectionObjectGet(third, &third_selection), CL_OK);
    ClCkptHdlT third_handle;
    EXPECT(clCkptCheckpointOpen(third, &name, NULL, CL_CKPT_CHECKPOINT_READ, CL_TIME_END, &third_handle), CL_OK);
    EXPECT(clCkptImmediateConsumptionRegister(third_handle, on_update, &cookie_marker), CL_OK);
    EXPECT(clCkptSectionOverwrite(h, &s1, "pending", 7), CL_OK);
    CHECK(readable_within((int)third_selection, 10000));
    before = atomic_load(&notifications);
    EXPECT(clCkptFinalize(third), CL_OK);
    /* The descriptor is closed (its number may be reused, never by an eventfd here). */
    CHECK(!is_eventfd((int)third_selection));
    EXPECT(clCkptDispatch(third, CL_DISPATCH_ALL), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSelectionObjectGet(third, &third_selection), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptFinalize(third), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointClose(third_handle), ERR(CL_ERR_INVALID_HANDLE));
    CHECK(atomic_load(&notifications) == before);

    /* Close drops the handle's pending callbacks: the selection object is
     * no longer readable and Dispatch runs nothing of it. */
    EXPECT(clCkptSectionOverwrite(h, &s1, "dropped", 7), CL_OK);
    CHECK(readable_within(fd, 10000));
    before = atomic_load(&notifications);
    EXPECT(clCkptCheckpointClose(async_handle), CL_OK);
    CHECK(!readable_within(fd, 0));
    EXPECT(clCkptDispatch(svc, CL_DISPATCH_ALL), CL_OK);
    CHECK(atomic_load(&notifications) == before);

    /* clCkptCheckpointClose, clCkptCheckpointDelete, clCkptFinalize */
    EXPECT(clCkptCheckpointClose(async_handle), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptSectionOverwrite(async_handle, &s1, "x", 1), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointClose(reader), CL_OK);
    EXPECT(clCkptCheckpointDelete(svc, NULL), ERR(CL_ERR_NULL_POINTER));
    EXPECT(clCkptCheckpointDelete(svc, &too_long), ERR(CL_ERR_NAME_TOO_LONG));
    EXPECT(clCkptCheckpointDelete(9292, &name), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptCheckpointDelete(svc, &absent), ERR(CL_ERR_NOT_EXIST));
    EXPECT(clCkptCheckpointDelete(svc, &name), CL_OK);
    EXPECT(clCkptCheckpointDelete(svc, &name), ERR(CL_ERR_NOT_EXIST));
    /* The open handle keeps the deleted instance until its close. */
    EXPECT(clCkptSectionOverwrite(h, &s1, "still", 5), CL_OK);
    EXPECT(clCkptCheckpointRetentionDurationSet(h, 1), ERR(CL_ERR_BAD_OPERATION));
    EXPECT(clCkptFinalize(svc), CL_OK);
    EXPECT(clCkptSectionOverwrite(h, &s1, "x", 1), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptFinalize(svc), ERR(CL_ERR_INVALID_HANDLE));
    EXPECT(clCkptFinalize(0), ERR(CL_ERR_INVALID_HANDLE));

    /* clHeapApi.h: what the library hands out is released with these. */
    char *block = clHeapAllocate(16);
    CHECK(block != NULL);
    memset(block, 'x', 16);
    block = clHeapRealloc(block, 4096);
    CHECK(block != NULL && block[15] == 'x');
    clHeapFree(block);
    ClUint32T *zeros = clHeapCalloc(8, sizeof(ClUint32T));
    CHECK(zeros != NULL && zeros[7] == 0);
    clHeapFree(zeros);
    clHeapFree(NULL);
    puts("PASS");
    return 0;
}
