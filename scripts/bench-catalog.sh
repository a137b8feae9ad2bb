#!/usr/bin/env bash
# How long hsmctl report takes on a catalog of 1,000,000 file rows (filled through the
# catalog's own writer; see scripts/bench_catalog.py). Needs root.
#   bash scripts/bench-catalog.sh [--files N] [--runs N]
# SCRATCH=DIR selects SwiftPM's scratch path (default .build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCRATCH="${SCRATCH:-.build}"
swift build -c release --scratch-path "$SCRATCH" 2>&1 | tail -n 1
exec python3 scripts/bench_catalog.py --bindir "$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)" "$@"
