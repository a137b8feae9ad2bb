#!/usr/bin/env bash
# hsmd benchmarks. Builds in release mode, then runs every case side by side with its
# baseline on a loop-mounted ext4 filesystem of its own, then (case s3, first) the S3 section
# against a Ceph RGW it starts (scripts/bench_s3.py). --quick: smaller sizes, a few minutes;
# --cases s3: the S3 section alone. Results: a line per case on stdout and bench-results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
swift build -c release 2>&1 | tail -n 1
exec python3 scripts/bench.py --bindir "$(swift build -c release --show-bin-path)" "$@"
