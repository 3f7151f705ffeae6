/*
 * clCommon.h — the OpenClovis base types the checkpoint API uses, for ckpt's
 * C library (libckpt). Names, sizes, layouts and values are those of the
 * OpenClovis SDK, so an application written against SAFplus compiles
 * unchanged; only what the checkpoint API needs is here.
 */
#ifndef _CL_COMMON_H_
#define _CL_COMMON_H_

#include <stddef.h> /* NULL, in CL_CKPT_DEFAULT_SECTION_ID */

#ifdef __cplusplus
extern "C" {
#endif

/* Markers on API arguments; they mean nothing to the compiler. */
#define CL_IN
#define CL_OUT
#define CL_INOUT

#define CL_TRUE  1
#define CL_FALSE 0

typedef unsigned long long ClUint64T;
typedef signed long long   ClInt64T;
typedef unsigned int       ClUint32T;
typedef signed int         ClInt32T;
typedef unsigned short     ClUint16T;
typedef signed short       ClInt16T;
typedef unsigned char      ClUint8T;
typedef signed char        ClInt8T;
typedef char               ClCharT;
typedef signed int         ClFdT;
typedef unsigned long      ClWordT;
typedef ClUint16T          ClBoolT;

/** A time or a duration in nanoseconds. */
typedef ClInt64T  ClTimeT;
typedef ClUint64T ClHandleT;
/** A number of bytes. */
typedef ClUint64T ClSizeT;
/** An offset within a buffer or object. */
typedef ClInt64T  ClOffsetT;
typedef ClUint64T ClInvocationT;
/** A file descriptor, for poll() or select(). */
typedef ClUint64T ClSelectionObjectT;
typedef void     *ClPtrT;

/** Return codes: see clCommonErrors.h. */
typedef ClUint32T ClRcT;

#define CL_MICRO_TO_NANO  1000ULL
#define CL_MILLI_TO_MICRO 1000ULL
#define CL_SEC_TO_MILLI   1000ULL
#define CL_MILLI_TO_NANO  (CL_MICRO_TO_NANO * CL_MILLI_TO_MICRO)
#define CL_SEC_TO_NANO    (CL_MILLI_TO_NANO * CL_SEC_TO_MILLI)

/** A time that never comes: retention forever, no timeout. */
#define CL_TIME_END     0x7fffffffffffffffULL
#define CL_TIME_FOREVER 0x7fffffffffffffffULL

/** Longest name held by a ClNameT. */
#define CL_MAX_NAME_LENGTH 256

/** A name: `length` bytes of `value` (not NUL-terminated). */
typedef struct {
    ClUint16T length;
    ClCharT   value[CL_MAX_NAME_LENGTH];
} ClNameT;

/** A service version. */
typedef struct {
    /** One ASCII capital letter, 'A'..'Z'. */
    ClUint8T releaseCode;
    ClUint8T majorVersion;
    ClUint8T minorVersion;
} ClVersionT;

/** How a dispatch call runs pending callbacks. */
typedef enum {
    CL_DISPATCH_ONE      = 1,
    CL_DISPATCH_ALL      = 2,
    CL_DISPATCH_BLOCKING = 3
} ClDispatchFlagsT;

/** Component ids in return codes (the checkpoint service's only). */
#define CL_CID_UNSPECIFIED 0x00
#define CL_CID_CKPT        0x16

#ifdef __cplusplus
}
#endif

#endif /* _CL_COMMON_H_ */
