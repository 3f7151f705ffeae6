/*
 * clHeapApi.h — the OpenClovis heap calls, for ckpt's C library.
 *
 * Memory the checkpoint library hands to the application (a read buffer
 * for an element whose dataBuffer was NULL, a generated section id, the id
 * in a section descriptor from clCkptSectionIterationNext) is allocated
 * with malloc and released with clHeapFree (or free: they are the same).
 */
#ifndef _CL_HEAP_API_H_
#define _CL_HEAP_API_H_

#include <clCommon.h>

#ifdef __cplusplus
extern "C" {
#endif

/** malloc(size); NULL when out of memory. */
extern ClPtrT clHeapAllocate(CL_IN ClUint32T size);

/** calloc(numChunks, chunkSize); NULL when out of memory or on overflow. */
extern ClPtrT clHeapCalloc(CL_IN ClUint32T numChunks, CL_IN ClUint32T chunkSize);

/** realloc(pAddress, size). */
extern ClPtrT clHeapRealloc(CL_IN ClPtrT pAddress, CL_IN ClUint32T size);

/** free(pAddress); NULL is allowed. */
extern void clHeapFree(CL_IN ClPtrT pAddress);

#ifdef __cplusplus
}
#endif

#endif /* _CL_HEAP_API_H_ */
