/*
 * clCommonErrors.h — OpenClovis return codes, for ckpt's C library.
 *
 * A return code is (component id << 16) | error code; CL_OK is 0. Every
 * failing clCkpt* call of libckpt returns CL_RC(CL_CID_CKPT, CL_ERR_...):
 * compare CL_GET_ERROR_CODE(rc) with the CL_ERR_* values below.
 */
#ifndef _CL_COMMON_ERRORS_H_
#define _CL_COMMON_ERRORS_H_

#include <clCommon.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CL_OK                      0x00
#define CL_ERR_NO_MEMORY           0x01
#define CL_ERR_INVALID_PARAMETER   0x02
#define CL_ERR_NULL_POINTER        0x03
#define CL_ERR_NOT_EXIST           0x04
#define CL_ERR_INVALID_HANDLE      0x05
#define CL_ERR_INVALID_BUFFER      0x06
#define CL_ERR_NOT_IMPLEMENTED     0x07
#define CL_ERR_DUPLICATE           0x08
#define CL_ERR_QUEUE_NOT_AVAILABLE 0x09
#define CL_ERR_OUT_OF_RANGE        0x0a
#define CL_ERR_NO_RESOURCE         0x0b
#define CL_ERR_INITIALIZED         0x0c
#define CL_ERR_BUFFER_OVERRUN      0x0d
#define CL_ERR_NOT_INITIALIZED     0x0e
#define CL_ERR_VERSION_MISMATCH    0x0f
#define CL_ERR_ALREADY_EXIST       0x10
#define CL_ERR_UNSPECIFIED         0x11
#define CL_ERR_INVALID_STATE       0x12
#define CL_ERR_DOESNT_EXIST        0x13
#define CL_ERR_TIMEOUT             0x14
#define CL_ERR_INUSE               0x15
#define CL_ERR_TRY_AGAIN           0x16
#define CL_ERR_NO_CALLBACK         0x17
#define CL_ERR_MUTEX_ERROR         0x18
#define CL_ERR_NO_OP               0x19
#define CL_ERR_NAME_TOO_LONG       0x1a
#define CL_ERR_NAME_NOT_FOUND      0x1b
#define CL_ERR_MESSAGE_ERROR       0x1c
#define CL_ERR_TOO_BIG             0x1d
#define CL_ERR_NO_SECTIONS         0x1e
#define CL_ERR_FAILED_OPERATION    0x1f
#define CL_ERR_OP_NOT_PERMITTED    0x20
#define CL_ERR_NO_SPACE            0x21
#define CL_ERR_BAD_FLAG            0x22
#define CL_ERR_BAD_OPERATION       0x23
#define CL_ERR_LIBRARY             0x24
#define CL_ERR_NOT_SUPPORTED       0x25
#define CL_ERR_INTERRUPT           0x26
#define CL_ERR_CONTINUE            0x27
/** The last common code; components number theirs from 0x100. */
#define CL_ERR_COMMON_MAX          0xff

#define CL_CID_OFFSET      16
#define CL_ERROR_CODE_MASK 0xffff

/** A return code from a component id and an error code (CL_OK stays 0). */
#define CL_RC(CID, ERROR_CODE)                                            \
    ((ClUint32T)(((ERROR_CODE) == CL_OK)                                  \
                     ? (ERROR_CODE)                                       \
                     : ((ClUint32T)(((CID) << CL_CID_OFFSET) |            \
                                    ((ERROR_CODE) & CL_ERROR_CODE_MASK)))))

/** The error code of a return code. */
#define CL_GET_ERROR_CODE(RC) ((ClUint32T)((RC) & CL_ERROR_CODE_MASK))

/** The component id of a return code. */
#define CL_GET_CID(RC) ((ClUint32T)((RC) >> CL_CID_OFFSET))

#ifdef __cplusplus
}
#endif

#endif /* _CL_COMMON_ERRORS_H_ */
