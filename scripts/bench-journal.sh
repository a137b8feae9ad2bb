#!/usr/bin/env bash
# What the change journal costs the filesystem: the same create/write/rename/chmod/unlink
# workload (an untarred tree of tens of thousands of files) with hsmd's journal on and
# off, alternating in one run on a loop-mounted ext4 of its own; median of several runs,
# the ratio, and the database transactions per epoch. Needs root.
#   bash scripts/bench-journal.sh [--files N] [--runs N] [--compare-bindir OTHER_BUILD/release]
# SCRATCH=DIR selects SwiftPM's scratch path (default .build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCRATCH="${SCRATCH:-.build}"
swift build -c release --scratch-path "$SCRATCH" 2>&1 | tail -n 1
exec python3 scripts/bench_journal.py --bindir "$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)" "$@"
