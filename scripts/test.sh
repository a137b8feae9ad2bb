#!/usr/bin/env bash
# Runs every test: Swift unit tests, then integration tests on real loop-mounted ext4
# filesystems with a real hsmd. Needs root (loop devices, fanotify, trusted.* xattrs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
swift build
swift test 2>&1 | tail -n 40
python3 -m pytest -v -p no:cacheprovider tests/integration "$@"
