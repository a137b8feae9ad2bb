#!/usr/bin/env bash
# hsmd end to end on embedded defaults: a loop-mounted ext4 filesystem and a posix store
# in a temporary folder, a sample tree migrated to the store, read back with ordinary
# tools and checked, then everything stopped and removed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== building hsmd (release)"
swift build -c release 2>&1 | tail -n 1
BIN="$(swift build -c release --show-bin-path)"

WORK="$(mktemp -d /tmp/hsmd-demo.XXXXXX)"
MNT="$WORK/data" STORE="$WORK/store" PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    mountpoint -q "$MNT" && umount "$MNT"
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT" "$STORE"
truncate -s 2G "$WORK/data.img"
mkfs.ext4 -q "$WORK/data.img"
mount -o loop "$WORK/data.img" "$MNT"
cat > "$WORK/hsmd.toml" <<TOML
socket = "$WORK/hsmd.sock"
state_dir = "$WORK/state"
[[store]]
name = "demo-tier"
type = "posix"
path = "$STORE"
[[filesystem]]
path = "$MNT"
store = "demo-tier"
TOML
export HSMD_SOCKET="$WORK/hsmd.sock"

echo "== starting hsmd"
"$BIN/hsmd" --config "$WORK/hsmd.toml" 2> "$WORK/hsmd.log" &
PID=$!
for _ in $(seq 100); do "$BIN/hsmctl" doctor >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/hsmctl" doctor

echo "== writing a sample tree"
python3 - "$MNT" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
for d in range(8):
    os.makedirs(f"{root}/project{d}/results", exist_ok=True)
    for f in range(25):
        size = rng.choice([300, 4096, 70_000, 1 << 20, 3_000_001])
        with open(f"{root}/project{d}/results/run{f}.dat", "wb") as out:
            out.write(os.urandom(size))
with open(f"{root}/project0/big.img", "wb") as out:
    for _ in range(64):
        out.write(os.urandom(1 << 20))
# A sparse file: 4 MiB of data around a 100 MiB hole.
with open(f"{root}/project1/sparse.vm", "wb") as out:
    out.write(os.urandom(2 << 20)); out.seek(100 << 20, 1); out.write(os.urandom(2 << 20))
PY
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$WORK/manifest"
# Everything but project7 last used 60 days ago; project7 is "hot". (After the checksums:
# reading a file counts as using it.)
find "$MNT" -path "$MNT/project7" -prune -o -type f -exec touch -d '60 days ago' {} +
used_before=$(df --output=used -B1 "$MNT" | tail -n 1)

echo "== hsmctl migrate $MNT --older-than 30d"
"$BIN/hsmctl" migrate "$MNT" --older-than 30d --jobs 2
sync
used_after=$(df --output=used -B1 "$MNT" | tail -n 1)

echo "== hsmctl status (first rows)"
"$BIN/hsmctl" status "$MNT" | sed -n 1,6p
"$BIN/hsmctl" status --json "$MNT" | python3 -c '
import collections, json, sys
rows = json.load(sys.stdin)
print("states:", dict(collections.Counter(r["state"] for r in rows)))'

echo "== reading every file back with sha256sum (cold cache)"
echo 3 > /proc/sys/vm/drop_caches
(cd "$MNT" && sha256sum --quiet -c "$WORK/manifest") && echo "all $(wc -l < "$WORK/manifest") files match their original checksums"
"$BIN/hsmctl" status --json "$MNT" | python3 -c '
import collections, json, sys
rows = json.load(sys.stdin)
print("states after reading:", dict(collections.Counter(r["state"] for r in rows)))'

python3 - "$used_before" "$used_after" <<'PY'
import sys
b, a = int(sys.argv[1]), int(sys.argv[2])
print(f"space used on the managed filesystem: {b/2**20:.1f} MiB before migrate, {a/2**20:.1f} MiB after: {(b-a)/2**20:.1f} MiB saved")
PY

echo "== stopping hsmd"
kill "$PID"; wait "$PID" || true; PID=""
tail -n 2 "$WORK/hsmd.log"
echo "demo finished: cleaning up $WORK"
