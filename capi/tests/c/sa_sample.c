/*
 * sa_sample — an SA Forum checkpoint program in the style of the classic
 * AIS examples: create a checkpoint, write sections, iterate over them,
 * read them back, unlink. Prints "PASS" when everything read back is what
 * was written. The servers are CKPT_SERVERS (or the default address).
 */
#include <saCkpt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTIONS 5

static void check(SaAisErrorT error, const char *what)
{
    if (error != SA_AIS_OK) {
        fprintf(stderr, "sa_sample: %s failed: %d\n", what, (int)error);
        exit(1);
    }
}

int main(void)
{
    SaCkptHandleT ckpt_handle;
    SaVersionT version = {'B', 2, 2};
    check(saCkptInitialize(&ckpt_handle, NULL, &version), "saCkptInitialize");

    SaNameT name;
    memset(&name, 0, sizeof name);
    name.length = (SaUint16T)snprintf((char *)name.value, SA_MAX_NAME_LENGTH, "sa-sample-%d", (int)getpid());
    SaCkptCheckpointCreationAttributesT attributes = {
        SA_CKPT_WR_ALL_REPLICAS, SECTIONS * 100, SA_TIME_END, SECTIONS, 100, 20};
    SaCkptCheckpointHandleT checkpoint;
    check(saCkptCheckpointOpen(ckpt_handle, &name, &attributes,
                               SA_CKPT_CHECKPOINT_CREATE | SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE,
                               SA_TIME_ONE_SECOND * 10, &checkpoint),
          "saCkptCheckpointOpen");

    /* Create the sections, then write them all in one atomic write. */
    char ids[SECTIONS][16], data[SECTIONS][32];
    SaCkptIOVectorElementT writes[SECTIONS];
    for (int i = 0; i < SECTIONS; i++) {
        snprintf(ids[i], sizeof ids[i], "section-%d", i);
        snprintf(data[i], sizeof data[i], "data of section %d", i);
        SaCkptSectionIdT id = {(SaUint16T)strlen(ids[i]), (SaUint8T *)ids[i]};
        SaCkptSectionCreationAttributesT create = {&id, SA_TIME_END};
        check(saCkptSectionCreate(checkpoint, &create, "", 0), "saCkptSectionCreate");
        writes[i].sectionId = id;
        writes[i].dataBuffer = data[i];
        writes[i].dataSize = strlen(data[i]);
        writes[i].dataOffset = 0;
        writes[i].readSize = 0;
    }
    SaUint32T erroneous;
    check(saCkptCheckpointWrite(checkpoint, writes, SECTIONS, &erroneous), "saCkptCheckpointWrite");

    /* Iterate, reading each section into a buffer the library allocates. */
    SaCkptSectionIterationHandleT iteration;
    check(saCkptSectionIterationInitialize(checkpoint, SA_CKPT_SECTIONS_ANY, 0, &iteration),
          "saCkptSectionIterationInitialize");
    int found = 0;
    SaCkptSectionDescriptorT descriptor;
    SaAisErrorT error;
    while ((error = saCkptSectionIterationNext(iteration, &descriptor)) == SA_AIS_OK) {
        SaCkptIOVectorElementT read;
        memset(&read, 0, sizeof read);
        read.sectionId = descriptor.sectionId;
        read.dataBuffer = NULL;
        check(saCkptCheckpointRead(checkpoint, &read, 1, &erroneous), "saCkptCheckpointRead");
        /* The id is not NUL-terminated: copy it out to parse it. */
        char id[32] = {0};
        memcpy(id, descriptor.sectionId.id, descriptor.sectionId.idLen < sizeof id - 1 ? descriptor.sectionId.idLen : sizeof id - 1);
        int i = -1;
        if (sscanf(id, "section-%d", &i) != 1 || i < 0 || i >= SECTIONS ||
            read.readSize != strlen(data[i]) || memcmp(read.dataBuffer, data[i], read.readSize) != 0 ||
            descriptor.sectionSize != read.readSize) {
            fprintf(stderr, "sa_sample: section %.*s does not hold what was written\n",
                    (int)descriptor.sectionId.idLen, (const char *)descriptor.sectionId.id);
            return 1;
        }
        check(saCkptIOVectorElementDataFree(checkpoint, read.dataBuffer), "saCkptIOVectorElementDataFree");
        found++;
    }
    if (error != SA_AIS_ERR_NO_SECTIONS || found != SECTIONS) {
        fprintf(stderr, "sa_sample: iteration ended with %d after %d sections\n", (int)error, found);
        return 1;
    }
    check(saCkptSectionIterationFinalize(iteration), "saCkptSectionIterationFinalize");

    check(saCkptCheckpointClose(checkpoint), "saCkptCheckpointClose");
    check(saCkptCheckpointUnlink(ckpt_handle, &name), "saCkptCheckpointUnlink");
    if (saCkptCheckpointOpen(ckpt_handle, &name, NULL, SA_CKPT_CHECKPOINT_READ, SA_TIME_END, &checkpoint) !=
        SA_AIS_ERR_NOT_EXIST) {
        fprintf(stderr, "sa_sample: the checkpoint is still there after unlink\n");
        return 1;
    }
    check(saCkptFinalize(ckpt_handle), "saCkptFinalize");
    puts("PASS");
    return 0;
}
