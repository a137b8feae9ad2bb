#!/usr/bin/env bash
# Installs what hsmd's build, demo and tests need on a fresh Debian machine. Idempotent:
# installs only what is missing, and runs `apt-get update` only then.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "setup.sh: run as root (apt-get, loop devices, fanotify)" >&2; exit 2; }

need_apt=()
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need_apt+=(xfsprogs)       # tests on xfs loop images
command -v mkfs.btrfs >/dev/null || need_apt+=(btrfs-progs)  # tests on btrfs loop images, and of times ext4 cannot store
command -v setfattr >/dev/null || need_apt+=(attr)
command -v losetup >/dev/null || need_apt+=(mount)
command -v tar >/dev/null || need_apt+=(tar)
command -v strace >/dev/null || need_apt+=(strace)      # a test checks hsmd's syscall order
command -v setcap >/dev/null || need_apt+=(libcap2-bin)   # setcap, capsh: tests of files' capabilities
command -v setpriv >/dev/null || need_apt+=(util-linux)   # runs hsmd with the unit's capabilities in tests
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)   # qemu-img, qemu-nbd: tests of image readers
[ -f /usr/include/sqlite3.h ] || need_apt+=(libsqlite3-dev)   # the change journal's database
command -v promtool >/dev/null || need_apt+=(prometheus)   # promtool checks hsmd's metrics exposition (test_metrics.py)
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)   # TLS for the s3 store's https endpoints
command -v openssl >/dev/null || need_apt+=(openssl)   # the https tests make their own CA with it
# The tests under a real systemd (tests/integration/test_systemd_life.py) boot a Debian
# root tree, built by debootstrap, in systemd-nspawn.
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
# The S3 store's tests start a real single-node Ceph cluster and RADOS Gateway
# (tests/integration/rgw.py); boto3 creates their buckets.
# Without recommends: 48 packages instead of 98.
need_ceph=()
for b in ceph-mon ceph-osd radosgw; do command -v $b >/dev/null || need_ceph+=($b); done
command -v radosgw-admin >/dev/null || need_ceph+=(ceph-common)
python3 -c 'import boto3' 2>/dev/null || need_ceph+=(python3-boto3)
if [ ${#need_apt[@]} -gt 0 ] || [ ${#need_ceph[@]} -gt 0 ]; then
    apt-get update -qq
    [ ${#need_apt[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ ${#need_ceph[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_ceph[@]}" >/dev/null
fi
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
command -v swift >/dev/null || { echo "setup.sh: no Swift toolchain found (expected /opt/swift)" >&2; exit 2; }
