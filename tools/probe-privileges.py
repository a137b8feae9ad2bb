#!/usr/bin/env python3
# Kernel-fact probe (see docs/KERNEL-FACTS.md): run as root, on its own loop ext4 only.
# Which file operations strip the setuid/setgid bits and security.capability, with and
# without CAP_FSETID; and what putting them back needs (CAP_SETFCAP, CAP_FOWNER, CAP_FSETID).
# Each operation runs in a child started by setpriv with a reduced bounding set, as
# systemd's CapabilityBoundingSet= would start hsmd (root keeps exactly that set).
import os, subprocess, sys, tempfile

UNIT_CAPS = "cap_sys_admin,cap_lease,cap_fowner,cap_dac_override,cap_dac_read_search,cap_chown"
CAP = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_raw+ep (v2)
OPS = {
    "punch": "libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096))",  # PUNCH_HOLE|KEEP_SIZE
    "pwrite": "os.pwrite(fd, b'y', 0)",
    "ftruncate": "os.ftruncate(fd, 8192)",
    "fsetxattr_trusted": "os.setxattr(fd, 'trusted.probe', b'v')",
    "utimensat": "os.utime(fd, ns=(1, 1))",
    "fchmod_same": "os.fchmod(fd, os.fstat(fd).st_mode & 0o7777)",
}
CHILD = "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); fd = os.open(sys.argv[1], os.O_RDWR); {op}"


def run_as(caps, code, *args):
    # setpriv names capabilities without the cap_ prefix.
    names = ",".join("+" + c.removeprefix("cap_") for c in caps.split(","))
    cmd = ["setpriv", f"--bounding-set=-all,{names}", "--inh-caps=-all", sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def fresh(path, mode):
    with open(path, "wb") as f:
        f.write(b"x" * 16384)
    os.chown(path, 65534, 65534)  # another user's file, another group (nobody/nogroup)
    os.chmod(path, mode)
    os.setxattr(path, "security.capability", CAP)


def state(path):
    try:
        cap = os.getxattr(path, "security.capability").hex()
    except OSError:
        cap = "-"
    return f"mode {os.stat(path).st_mode & 0o7777:04o} cap {'kept' if cap == CAP.hex() else cap}"


def main():
    base = tempfile.mkdtemp(); img = base + "/img"; mnt = base + "/mnt"; os.mkdir(mnt)
    subprocess.run(["truncate", "-s", "64M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", img], check=True)
    subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
    try:
        f = mnt + "/f"
        for caps in (UNIT_CAPS, UNIT_CAPS + ",cap_fsetid"):
            print(f"== bounding set {caps}")
            for name, op in OPS.items():
                fresh(f, 0o6755)
                r = run_as(caps, CHILD.format(op=op), f)
                print(f"{name:18s} 6755+cap -> {state(f)} {r.stderr.strip()[-80:]}")
        print("== putting them back (file owned by 65534:65534, after a pwrite as root without CAP_FSETID)")
        restore_cap = "os.setxattr(fd, 'security.capability', bytes.fromhex(sys.argv[2]))"
        chmod = "os.fchmod(fd, int(sys.argv[2], 8))"
        for caps in (UNIT_CAPS, UNIT_CAPS + ",cap_setfcap", UNIT_CAPS + ",cap_fsetid"):
            for what, code, arg in (("security.capability", restore_cap, CAP.hex()), ("chmod 4755", chmod, "4755"),
                                    ("chmod 2755", chmod, "2755"), ("chmod 6755", chmod, "6755")):
                fresh(f, 0o6755)
                run_as(UNIT_CAPS, CHILD.format(op="os.pwrite(fd, b'y', 0)"), f)
                r = run_as(caps, CHILD.format(op=code), f, arg)
                print(f"{what:20s} with {caps.replace(UNIT_CAPS, 'unit'):18s} -> {state(f)} {r.stderr.strip().splitlines()[-1:] }")
        print("== does putting security.capability back strip the mode, or chmod the capability?")
        fresh(f, 0o6755)
        run_as(UNIT_CAPS + ",cap_setfcap", CHILD.format(op=restore_cap), f, CAP.hex())
        print(f"setxattr security.capability on 6755+cap -> {state(f)}")
        fresh(f, 0o6755)
        run_as(UNIT_CAPS, CHILD.format(op="os.fchmod(fd, 0o6755)"), f)
        print(f"fchmod 6755 on 6755+cap -> {state(f)}")
        print("== setgid on a file that is not group-executable (2745)")
        for caps in (UNIT_CAPS, UNIT_CAPS + ",cap_fsetid"):
            fresh(f, 0o2745)
            run_as(caps, CHILD.format(op="os.pwrite(fd, b'y', 0)"), f)
            print(f"pwrite with {caps.replace(UNIT_CAPS, 'unit'):15s} -> {state(f)}")
        print("== setgid of a group hsmd (root, gid 0) is in: file 65534:0")
        for m in (0o2755, 0o2745):
            fresh(f, m)
            os.chown(f, 65534, 0)
            os.chmod(f, m)
            run_as(UNIT_CAPS, CHILD.format(op="os.pwrite(fd, b'y', 0)"), f)
            print(f"pwrite {m:04o} with unit -> {state(f)}")
    finally:
        subprocess.run(["umount", mnt]); subprocess.run(["rm", "-rf", base])


main()
