// systemd integration: sd_notify with fd passing, and the fd-number bookkeeping a
// successor needs to answer its predecessor's events (docs/ARCHITECTURE.md).
#ifndef CHSM_SYSTEMD_H
#define CHSM_SYSTEMD_H

#define CHSM_SD_MAX_FDS 16

/// Sends `state` to $NOTIFY_SOCKET with `fds` attached (SCM_RIGHTS): "FDSTORE=1\nFDNAME=x"
/// hands them to systemd's fd store. 0 when sent or no socket is set, -errno on failure.
int chsm_sd_notify_fds(const char *state, const int *fds, int nfds);
/// 1 when `fd` is an open descriptor of this process.
int chsm_fd_is_open(int fd);
/// FD_CLOEXEC on an inherited fd. 0 or -errno.
int chsm_fd_set_cloexec(int fd);
/// Occupies fd number `fd` with /dev/null so the kernel hands it to no new event until it
/// is closed. 0, -EBUSY when the number is already open, or -errno.
int chsm_reserve_fd_number(int fd);

#endif
