#!/usr/bin/env python3
"""Turns bench-results.json (from scripts/bench.sh) into the markdown table of
docs/BENCHMARKS.md, so the document holds exactly what was measured."""
import json
import sys


def fmt_s(st):
    return f"{st['median']:.3f} s (min {st['min']:.3f}, max {st['max']:.3f}, n={st['n']})"


def fmt_ms(st):
    return f"{st['median']:.2f} ms (min {st['min']:.2f}, max {st['max']:.2f}, n={st['n']})"


def fmt_size(n):
    return f"{n / 2**30:.0f} GiB" if n >= 2**30 else f"{n >> 20} MiB"


def main(path):
    data = json.load(open(path))
    r, m = data["results"], data["machine"]
    rows = []
    if c := r.get("1 resident tree read"):
        rows.append(("1", f"read {c['files']} resident files ({c['bytes'] / 2**30:.1f} GiB), page cache warm",
                     f"no hsmd {fmt_s(c['no_hsmd_s'])}; first pass {fmt_s(c['first_pass_s'])}; second pass {fmt_s(c['second_pass_s'])}",
                     f"first {c['first_ratio']}, second {c['second_ratio']}", "≤ 1.25 / ≤ 1.03"))
    if c := r.get("2 sequential read, released"):
        rows.append(("2", f"sequential read of a released {fmt_size(c['bytes'])} file, cold",
                     f"store object directly {fmt_s(c['store_object_direct_s'])} ({c['direct_MBps']} MB/s); released file {fmt_s(c['released_file_s'])} ({c['released_MBps']} MB/s)"
                     + (f"; floor: `dd` of the object into a new file {fmt_s(c['copy_into_file_s'])}" if "copy_into_file_s" in c else "")
                     + (f"; the same with `conv=fdatasync` {fmt_s(c['copy_into_file_fdatasync_s'])}" if "copy_into_file_fdatasync_s" in c else ""),
                     f"{c['ratio']}" + (f" (floor {c['floor_ratio']}; released ÷ floor {c['ratio_to_floor']})" if "floor_ratio" in c else "")
                     + (f"; released ÷ durable floor {c['ratio_to_durable_floor']}" if "ratio_to_durable_floor" in c else "")
                     + (f"; {c['events_per_GiB']} events per GiB" if "events_per_GiB" in c else "")
                     + (f"; `cat` {fmt_s(c['released_file_cat_s'])}, {c['cat_events_per_GiB']} events per GiB"
                        if "cat_events_per_GiB" in c else ""), "≤ 1.25"))
    if c := r.get("3 time to first byte"):
        rows.append(("3", f"first byte of a released {fmt_size(c['big_bytes'])} file, cold (and of an 8 MiB one)",
                     f"{fmt_ms(c['big_ms'])}; 8 MiB file {fmt_ms(c['small_8MiB_ms'])}", "—", "median ≤ 20 ms"))
    if c := r.get("4 random 4 KiB reads, released"):
        rows.append(("4", f"{c['reads']} random 4 KiB reads over a released {fmt_size(c['bytes'])} file, cold",
                     f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms; bytes recalled ÷ bytes read {c['recalled_over_read']}"
                     + (f"; the same reads again: p50 {c['second_pass_p50_ms']} ms, store ÷ read {c['second_pass_store_read_over_read']}"
                        if "second_pass_p50_ms" in c else ""), "—", "report"))
    if c := r.get("5 tar of 16 KiB files"):
        rows.append(("5", f"`tar cf - DIR \\| wc -c` over {c['files']} files of 16 KiB, cold",
                     f"resident {fmt_s(c['resident_s'])} ({c['resident_files_per_s']} files/s); released {fmt_s(c['released_s'])} ({c['released_files_per_s']} files/s)",
                     f"{c['ratio']}", "report"))
    if c := r.get("6 migrate small files + one big file"):
        rows.append(("6", f"migrate {c['files'] - 1} small files + one big file ({c['bytes'] / 2**30:.1f} GiB), `--jobs {c['jobs']}`",
                     f"`cp -a` into the store + `sync` {fmt_s(c['cp_a_sync_s'])}; migrate {fmt_s(c['migrate_s'])} ({c['migrate_files_per_s']} files/s, {c['migrate_MBps']} MB/s)",
                     f"{c['ratio']}", "≤ 1.5"))
    if c := r.get("7 concurrent readers of released files"):
        rows.append(("7", f"8 concurrent readers of 8 released {c['bytes_each'] >> 20} MiB files, cold",
                     f"one reader {c['one_reader_MBps']} MB/s; eight readers {c['eight_readers_MBps']} MB/s aggregate"
                     + (f"; floor (eight `dd` of the objects into new files at once) {c['floor_eight_copies_MBps']} MB/s"
                        if "floor_eight_copies_MBps" in c else "")
                     + (f"; the same with `conv=fdatasync` {c['floor_eight_durable_copies_MBps']} MB/s"
                        if "floor_eight_durable_copies_MBps" in c else ""),
                     f"scaling {c['scaling']}" + (f"; aggregate ÷ floor {c['aggregate_over_floor']}" if "aggregate_over_floor" in c else "")
                     + (f", ÷ durable floor {c['aggregate_over_durable_floor']}" if "aggregate_over_durable_floor" in c else ""),
                     "≥ 0.8 of the floor" if "aggregate_over_floor" in c else "report"))
    if c := r.get("8 reads of resident files during a big migrate"):
        rows.append(("8", f"8 KiB reads of other resident files (cold) while a {c['migrate_bytes'] / 2**30:.0f} GiB file migrates ({c['migrate_s']} s)",
                     f"quiet: p99 {c['quiet_p99_ms']} ms, max {c['quiet_max_ms']} ms; during migrate: p99 {c['busy_p99_ms']} ms, max {c['busy_max_ms']} ms ({c['busy_samples']} reads)",
                     "—", "report"))
    if c := r.get("10 small released files"):
        rows.append(("10", f"{c['files']} released {c['file_KiB']} KiB files, one `cat` each, cold",
                     f"floor (`cat` of the objects) {fmt_s(c['floor_s'])}; hsmd {fmt_s(c['hsmd_s'])} ({c['files_per_s']} files/s); "
                     f"{c['events_per_file']} events and {c['hsmd_cpu_ms_per_file']} ms of hsmd CPU per file",
                     f"{c['ratio']}", "≤ 1.5; ≤ 1.1 events, ≤ 0.08 ms per file"))
    if c := r.get("11 first byte in one process"):
        rows.append(("11", f"open + first 4 KiB pread in one process, cold: released 16 KiB file and {c['large_bytes'] >> 20} MiB file",
                     f"small {fmt_ms(c['small']['hsmd_ms'])} (floor {fmt_ms(c['small']['floor_ms'])}); "
                     f"large {fmt_ms(c['large']['hsmd_ms'])} (floor {fmt_ms(c['large']['floor_ms'])})",
                     f"small {c['small_ratio']}, large {c['large_ratio']}", "≤ 2, independent of size"))
    if "9 hsmd peak RSS" in r:
        rows.append(("9", "hsmd peak RSS over the whole run", f"{r['9 hsmd peak RSS']['peak_rss_MiB']} MiB", "—", "≤ 64 MiB"))
    print(f"Machine: {m['nproc']} vCPUs, {m['mem_GiB']} GiB, Linux {m['kernel']}; {m['runs']} runs per case; whole run {m['seconds']} s.\n")
    print("| # | case | measured (median, min, max) | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results.json")
