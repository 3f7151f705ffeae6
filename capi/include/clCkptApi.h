/*
 * clCkptApi.h — the OpenClovis checkpoint API (clCkpt*), implemented by
 * ckpt's C library: link with -lckpt (pkg-config --libs ckpt).
 *
 * Names, layouts, flag values and return codes are those of the OpenClovis
 * SDK reference. What ckpt does differently (atomic writes, an enforced
 * checkpointSize, durability, timeouts) is in docs/c-api.md.
 *
 * Every function may be called from several threads at once. Every
 * failing call returns CL_RC(CL_CID_CKPT, code): test CL_GET_ERROR_CODE(rc).
 * The servers are CKPT_SERVERS (host:port[,host:port...]) or 127.0.0.1:7400.
 */
#ifndef _CL_CKPT_API_H_
#define _CL_CKPT_API_H_

#include <clCommon.h>
#include <clCommonErrors.h>
#include <clCkptErrors.h>
#include <clHeapApi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Creation flags (ClCkptCreationFlagsT): exactly one update mode ... */
#define CL_CKPT_WR_ALL_REPLICAS            0X1
#define CL_CKPT_WR_ACTIVE_REPLICA          0X2
#define CL_CKPT_WR_ACTIVE_REPLICA_WEAK     0X4
/* ... and any of these. */
#define CL_CKPT_CHECKPOINT_COLLOCATED      0X8
#define CL_CKPT_DISTRIBUTED                0X10
#define CL_CKPT_WR_ALL_SAFE                0X20
#define CL_CKPT_ALL_OPEN_ARE_REPLICAS      0x40
#define CL_CKPT_PEER_TO_PEER_REPLICA       0x80
#define CL_CKPT_PEER_TO_PEER_CACHE_DISABLE 0x100

/* Open flags (ClCkptOpenFlagsT). */
#define CL_CKPT_CHECKPOINT_READ   0X1
#define CL_CKPT_CHECKPOINT_WRITE  0X2
#define CL_CKPT_CHECKPOINT_CREATE 0X4

/** The id of the only section of a checkpoint with maxSections == 1. */
#define CL_CKPT_DEFAULT_SECTION_ID   {0, NULL}
/** Asks clCkptSectionCreate to choose the id (returned in the attributes). */
#define CL_CKPT_GENERATED_SECTION_ID {0, NULL}

typedef ClHandleT ClCkptSvcHdlT;
typedef ClHandleT ClCkptHdlT;
typedef ClHandleT ClCkptSecItrHdlT;
typedef ClUint32T ClCkptCreationFlagsT;
typedef ClUint32T ClCkptOpenFlagsT;
typedef ClUint32T ClCkptSelectionObjT;

typedef struct {
    ClCkptCreationFlagsT creationFlags;
    /** Upper bound on the sum of all section sizes (enforced). */
    ClSizeT   checkpointSize;
    /** How long an unopened checkpoint is kept, in ns (CL_TIME_END: forever). */
    ClTimeT   retentionDuration;
    ClUint32T maxSections;
    ClSizeT   maxSectionSize;
    ClSizeT   maxSectionIdSize;
} ClCkptCheckpointCreationAttributesT;

typedef struct {
    ClUint16T idLen;
    ClUint8T *id;
} ClCkptSectionIdT;

typedef struct {
    /** In: the id to create, or CL_CKPT_GENERATED_SECTION_ID; out: the id. */
    ClCkptSectionIdT *sectionId;
    /** Absolute, ns since the epoch, or CL_TIME_END. */
    ClTimeT expirationTime;
} ClCkptSectionCreationAttributesT;

typedef enum {
    CL_CKPT_SECTION_VALID     = 1,
    CL_CKPT_SECTION_CORRUPTED = 2
} ClCkptSectionStateT;

typedef struct {
    /** id is allocated by the library: release it with clHeapFree. */
    ClCkptSectionIdT    sectionId;
    ClTimeT             expirationTime;
    ClSizeT             sectionSize;
    ClCkptSectionStateT sectionState;
    ClTimeT             lastUpdate;
} ClCkptSectionDescriptorT;

typedef enum {
    CL_CKPT_SECTIONS_FOREVER             = 1,
    CL_CKPT_SECTIONS_LEQ_EXPIRATION_TIME = 2,
    CL_CKPT_SECTIONS_GEQ_EXPIRATION_TIME = 3,
    CL_CKPT_SECTIONS_CORRUPTED           = 4,
    CL_CKPT_SECTIONS_ANY                 = 5
} ClCkptSectionsChosenT;

typedef struct {
    ClCkptSectionIdT sectionId;
    /** Read with NULL: the library allocates it (release with clHeapFree). */
    ClPtrT           dataBuffer;
    ClSizeT          dataSize;
    ClOffsetT        dataOffset;
    /** Read: bytes actually read. */
    ClSizeT          readSize;
} ClCkptIOVectorElementT;

typedef struct {
    ClCkptCheckpointCreationAttributesT checkpointCreationAttributes;
    ClUint32T numberOfSections;
    /** Sum of the section sizes (saturates at 0xffffffff). */
    ClUint32T memoryUsed;
} ClCkptCheckpointDescriptorT;

/**
 * An update of a checkpoint registered with clCkptImmediateConsumptionRegister,
 * run by clCkptDispatch: pIOVector holds numSections elements (section id,
 * data, dataSize, dataOffset), valid until the callback returns. A deleted
 * section comes as an element with dataBuffer NULL and dataSize 0; a call
 * with numSections 0 and pIOVector NULL says updates were missed: re-read.
 */
typedef ClRcT (*ClCkptNotificationCallbackT)(ClCkptHdlT ckptHdl,
                                             ClNameT *pName,
                                             ClCkptIOVectorElementT *pIOVector,
                                             ClUint32T numSections,
                                             ClPtrT pCookie);

typedef void (*ClCkptCheckpointOpenCallbackT)(ClInvocationT invocation,
                                              ClCkptHdlT checkpointHandle,
                                              ClRcT error);

typedef void (*ClCkptCheckpointSynchronizeCallbackT)(ClInvocationT invocation,
                                                     ClRcT error);

typedef struct {
    ClCkptCheckpointOpenCallbackT        checkpointOpenCallback;
    ClCkptCheckpointSynchronizeCallbackT checkpointSynchronizeCallback;
} ClCkptCallbacksT;

extern ClRcT clCkptInitialize(CL_OUT ClCkptSvcHdlT *ckptSvcHandle,
                              CL_IN const ClCkptCallbacksT *callbacks,
                              CL_INOUT ClVersionT *version);

extern ClRcT clCkptFinalize(CL_IN ClCkptSvcHdlT ckptHandle);

extern ClRcT clCkptSelectionObjectGet(CL_IN ClCkptSvcHdlT ckptHandle,
                                      CL_OUT ClSelectionObjectT *selectionObject);

extern ClRcT clCkptDispatch(CL_IN ClCkptSvcHdlT ckptHandle,
                            CL_IN ClDispatchFlagsT dispatchFlags);

extern ClRcT clCkptCheckpointOpen(CL_IN ClCkptSvcHdlT ckptHandle,
                                  CL_IN const ClNameT *ckeckpointName,
                                  CL_IN const ClCkptCheckpointCreationAttributesT *checkpointCreationAttributes,
                                  CL_IN ClCkptOpenFlagsT checkpointOpenFlags,
                                  CL_IN ClTimeT timeout,
                                  CL_IN ClCkptHdlT *checkpointHandle);

extern ClRcT clCkptCheckpointOpenAsync(CL_IN ClCkptSvcHdlT ckptHandle,
                                       CL_IN ClInvocationT invocation,
                                       CL_IN const ClNameT *checkpointName,
                                       CL_IN const ClCkptCheckpointCreationAttributesT *checkpoiNtCreationAttributes,
                                       CL_IN ClCkptOpenFlagsT checkpointOpenFlags);

extern ClRcT clCkptCheckpointClose(CL_IN ClCkptHdlT checkpointHandle);

extern ClRcT clCkptCheckpointDelete(CL_IN ClCkptSvcHdlT ckptHandle,
                                    CL_IN const ClNameT *checkpointName);

extern ClRcT clCkptCheckpointRetentionDurationSet(CL_IN ClCkptHdlT checkpointHandle,
                                                  CL_IN ClTimeT retentionDuration);

extern ClRcT clCkptActiveReplicaSet(CL_IN ClCkptHdlT checkpointHandle);

extern ClRcT clCkptCheckpointStatusGet(CL_IN ClCkptHdlT checkpointHandle,
                                       CL_OUT ClCkptCheckpointDescriptorT *checkpointStatus);

extern ClRcT clCkptSectionCreate(CL_IN ClCkptHdlT checkpointHandle,
                                 CL_IN ClCkptSectionCreationAttributesT *sectionCreationAttributes,
                                 CL_IN const ClUint8T *initialData,
                                 CL_IN ClSizeT initialDataSize);

extern ClRcT clCkptSectionDelete(CL_IN ClCkptHdlT checkpointHandle,
                                 CL_IN const ClCkptSectionIdT *sectionId);

extern ClRcT clCkptSectionExpirationTimeSet(CL_IN ClCkptHdlT checkpointHandle,
                                            CL_IN const ClCkptSectionIdT *sectionId,
                                            CL_IN ClTimeT expirationTime);

extern ClRcT clCkptSectionIterationInitialize(CL_IN ClCkptHdlT checkpointHandle,
                                              CL_IN ClCkptSectionsChosenT sectionsChosen,
                                              CL_IN ClTimeT expirationTime,
                                              CL_OUT ClHandleT *sectionIterationHandle);

extern ClRcT clCkptSectionIterationNext(CL_IN ClHandleT sectionIterationHandle,
                                        CL_OUT ClCkptSectionDescriptorT *sectionDescriptor);

extern ClRcT clCkptSectionIterationFinalize(CL_IN ClHandleT sectionIterationHandle);

extern ClRcT clCkptCheckpointWrite(CL_IN ClCkptHdlT checkpointHandle,
                                   CL_IN const ClCkptIOVectorElementT *ioVector,
                                   CL_IN ClUint32T numberOfElements,
                                   CL_OUT ClUint32T *erroneousVectorIndex);

extern ClRcT clCkptSectionOverwrite(CL_IN ClCkptHdlT checkpointHandle,
                                    CL_IN const ClCkptSectionIdT *sectionId,
                                    CL_IN const void *dataBuffer,
                                    CL_IN ClSizeT dataSize);

extern ClRcT clCkptCheckpointRead(CL_IN ClCkptHdlT checkpointHandle,
                                  CL_INOUT ClCkptIOVectorElementT *ioVector,
                                  CL_IN ClUint32T numberOfElements,
                                  CL_OUT ClUint32T *erroneousVectorIndex);

extern ClRcT clCkptCheckpointSynchronize(CL_IN ClCkptHdlT ckeckpointHandle,
                                         CL_IN ClTimeT timeout);

extern ClRcT clCkptCheckpointSynchronizeAsync(CL_IN ClCkptHdlT checkpointHandle,
                                              CL_IN ClInvocationT invocation);

extern ClRcT clCkptImmediateConsumptionRegister(CL_IN ClCkptHdlT checkpointHandle,
                                                CL_IN ClCkptNotificationCallbackT callback,
                                                CL_IN ClPtrT pCookie);

#ifdef __cplusplus
}
#endif

#endif /* _CL_CKPT_API_H_ */
