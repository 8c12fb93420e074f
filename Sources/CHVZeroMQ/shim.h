// Thin shim over libzmq for what Swift cannot import: errno values defined through
// ZMQ_HAUSNUMERO arithmetic, and the thread-local errno.
#ifndef HV_CHVZEROMQ_SHIM_H
#define HV_CHVZEROMQ_SHIM_H

#include <zmq.h>
#include <errno.h>

static inline int hv_zmq_errno(void) { return zmq_errno(); }

// zmq's own error codes (not in <errno.h>); the macros expand to arithmetic on ZMQ_HAUSNUMERO.
static inline int hv_zmq_ETERM(void) { return ETERM; }
static inline int hv_zmq_EFSM(void) { return EFSM; }
static inline int hv_zmq_ENOCOMPATPROTO(void) { return ENOCOMPATPROTO; }
static inline int hv_zmq_EMTHREAD(void) { return EMTHREAD; }

// Size of zmq_msg_t, so Swift can heap-allocate one without guessing.
static inline size_t hv_zmq_msg_size(void) { return sizeof(zmq_msg_t); }

#endif
