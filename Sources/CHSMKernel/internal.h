// Shared between the C files of the kernel layer; not part of its public interface.
#ifndef CHSM_INTERNAL_H
#define CHSM_INTERNAL_H
#include "chsm.h"
#include <sys/types.h>
#include <sys/socket.h>

/// Parses `len` bytes of fanotify events (FAN_EVENT_OK/NEXT), at most `maxout`, into `out`.
int chsm_parse_events(const void *buf, ssize_t len, chsm_event *out, int maxout);

struct sockaddr_un;
/// Fills a Unix socket address; a leading '@' means the abstract namespace. 0 or -errno.
int chsm_fill_sockaddr(const char *path, struct sockaddr_un *a, socklen_t *len);

#endif
