import Dispatch
import Foundation
import Glibc
import HSMCore
import HSMKernel
import Logging
import Synchronization

/// Space watermarks: on a thread of its own, looks at each managed filesystem's usage
/// (statvfs) every watermark_interval, and sooner after large recalls. At or above a
/// filesystem's high mark it runs a pass: release archived files, least recently used
/// first, then migrate (archive + release) cold files by the filesystem's policy, until
/// usage is below the low mark. Never a file used within min_age or excluded by the
/// policy. The work goes through the Archiver (inode locks, leases, the durability
/// order of archive and release); one pass at a time.
final class SpaceWatcher: Sendable {
    private let archiver: Archiver
    private let engine: RecallEngine
    private let settings: PolicySettings
    private let log: Logger
    private let wake = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let states = Mutex<[String: FilesystemState]>([:])

    /// Bytes recalled since the last look that bring the next look forward: 1% of the
    /// smallest filesystem with watermarks, between 1 MiB and 256 MiB.
    static func recallTrigger(_ capacities: [Int64]) -> Int64 {
        min(256 << 20, max(1 << 20, (capacities.min() ?? Int64.max) / 100))
    }
    /// Files a migration step archives together (one store flush), between usage checks.
    static let migrateChunk = 32
    /// Files of each kind (releases, migrations) one pass keeps from its walk.
    static let maxFilesPerPass = 100_000
    /// After a pass that could free nothing, the next walk waits this many intervals.
    static let stuckBackoffIntervals: Int64 = 10

    private struct FilesystemState {
        var draining = false
        /// The one warning that nothing eligible is left was logged.
        var warnedStuck = false
        var retryAfterNs: UInt64 = 0
        var checks = 0
        var passes = 0
        var usage: SpaceUsage?
        var lastPass: String?
    }

    init(archiver: Archiver, engine: RecallEngine, settings: PolicySettings, log: Logger) {
        self.archiver = archiver
        self.engine = engine
        self.settings = settings
        self.log = log
    }

    func start() {
        running.store(true, ordering: .releasing)
        startThread("hsmd-space") {
            defer { self.done.signal() }
            self.loop()
        }
    }

    /// Ends the thread after the file it is working on (waits up to `seconds`: the unit
    /// gives a stop 60 s in all, of which the recall drain takes up to 20).
    func stop(seconds: Double = 10) {
        guard running.load(ordering: .acquiring) else { return }
        stopping.store(true, ordering: .releasing)
        wake.signal()
        if done.wait(timeout: .now() + seconds) == .timedOut {
            log.warning("space watcher: a watermark pass did not stop within \(Int(seconds)) s; stopping anyway (operations under way are on record for the next start)")
        }
    }

    /// One line per filesystem with watermarks, for `hsmctl doctor`.
    var summary: String {
        let snap = settings.snapshot
        let s = states.withLock { $0 }
        return archiver.filesystems.all.compactMap { fs -> String? in
            guard let w = snap.watermarks[fs.path] else { return nil }
            let st = s[fs.path] ?? FilesystemState()
            let used = st.usage.map { "\($0.description) used" } ?? "not looked at yet"
            var line = "\(fs.path): \(used), high \(w.highPercent)%, low \(w.lowPercent)%, policy \(w.policy ?? "(none)"), min_age \(Units.formatDuration(w.minAgeSeconds)); \(st.checks) checks, \(st.passes) passes"
            if let last = st.lastPass { line += "; last pass: \(last)" }
            return line
        }.joined(separator: "\n")
    }

    private func loop() {
        var recalledAtLastLook = engine.bytesRecalled.load(ordering: .relaxed)
        var nextLook: UInt64 = 0
        var trigger = Self.recallTrigger([])
        while !stopping.load(ordering: .acquiring) {
            let snap = settings.snapshot
            let recalled = engine.bytesRecalled.load(ordering: .relaxed)
            let afterRecalls = recalled - recalledAtLastLook >= trigger
            if monotonicNanos() >= nextLook || afterRecalls {
                recalledAtLastLook = recalled
                if afterRecalls { log.debug("space watcher: \(Units.formatBytes(trigger)) or more recalled since the last look; looking now") }
                for fs in archiver.filesystems.all where !stopping.load(ordering: .acquiring) {
                    guard let w = snap.watermarks[fs.path] else { continue }
                    look(fs, w, snap)
                }
                trigger = Self.recallTrigger(states.withLock { s in snap.watermarks.keys.compactMap { s[$0]?.usage?.capacity } })
                nextLook = monotonicNanos() + UInt64(max(1, snap.intervalSeconds)) * 1_000_000_000
            }
            // Wakes each second to notice large recalls (an atomic load) and stops.
            _ = wake.wait(timeout: .now() + 1)
        }
    }

    private func usage(_ fs: ManagedFilesystem) -> SpaceUsage? {
        do {
            let s = try Filesystem.space(fd: fs.rootFD, path: fs.path)
            return SpaceUsage(fragmentSize: s.fragmentSize, blocks: s.blocks, free: s.free, available: s.available)
        } catch {
            log.error("space watcher: \(error); watermarks of \(fs.path) not checked")
            return nil
        }
    }

    private func update(_ fs: ManagedFilesystem, _ change: (inout FilesystemState) -> Void) -> FilesystemState {
        states.withLock { s in
            var st = s[fs.path] ?? FilesystemState()
            change(&st)
            s[fs.path] = st
            return st
        }
    }

    /// Looks at one filesystem's usage and runs a pass when it is due.
    private func look(_ fs: ManagedFilesystem, _ w: Watermarks, _ snap: PolicySettings.Snapshot) {
        guard let u = usage(fs) else { return }
        let now = monotonicNanos()
        let st = update(fs) { st in
            st.checks += 1
            st.usage = u
            if u.isAtOrAbove(percent: w.highPercent) {
                st.draining = true
            } else {
                // Below the high mark the next time it fills up is news again.
                st.warnedStuck = false
                st.retryAfterNs = 0
                if u.isBelow(percent: w.lowPercent) { st.draining = false }
            }
        }
        guard st.draining, now >= st.retryAfterNs else { return }
        let policy = w.policy.flatMap { name in snap.policies.first { $0.name == name }?.policy } ?? MigrationPolicy()
        let outcome = pass(fs, w, policy, start: u)
        let freedNothing = outcome.freed == 0 && outcome.released + outcome.migrated == 0
        let warn = update(fs) { st in
            st.passes += 1
            st.usage = outcome.end
            if outcome.end.isBelow(percent: w.lowPercent) { st.draining = false }
            if freedNothing {
                st.retryAfterNs = monotonicNanos() + UInt64(max(1, snap.intervalSeconds) * Self.stuckBackoffIntervals) * 1_000_000_000
            } else {
                st.warnedStuck = false
                st.retryAfterNs = 0
            }
            st.lastPass = outcome.line
        }
        if stopping.load(ordering: .acquiring) {
            log.notice("watermarks: \(fs.path): \(outcome.line); stopped early: hsmd is stopping")
        } else if freedNothing {
            if !warn.warnedStuck {
                _ = update(fs) { $0.warnedStuck = true }
                log.warning("watermarks: \(fs.path) is \(outcome.end.description) used (high \(w.highPercent)%, low \(w.lowPercent)%) and nothing eligible is left to release or migrate (\(outcome.skips)); hsmd keeps watching but says so again only after usage has been below the high mark")
            } else {
                log.debug("watermarks: \(fs.path): \(outcome.line)")
            }
        } else {
            log.notice("watermarks: \(fs.path): \(outcome.line)")
        }
    }

    private struct Outcome {
        var released = 0, migrated = 0, notDone = 0
        var freed: Int64 = 0
        var end: SpaceUsage
        var line = ""
        var skips = ""
    }

    /// One pass: a walk picks the least recently used eligible files that cover what
    /// must be freed, releases the archived ones, then migrates the rest, until usage is
    /// below the low mark.
    private func pass(_ fs: ManagedFilesystem, _ w: Watermarks, _ policy: MigrationPolicy, start: SpaceUsage) -> Outcome {
        let started = monotonicNanos()
        var out = Outcome(end: start)
        let need = start.bytesToFree(below: w.lowPercent)
        // A quarter more than the need: estimates from allocated bytes and files that
        // turn out busy should not cut a pass short.
        let target = need > Int64.max / 2 ? Int64.max : need + need / 4
        var releases = CandidateSelector(targetBytes: target, maxCount: Self.maxFilesPerPass)
        var migrations = CandidateSelector(targetBytes: target, maxCount: Self.maxFilesPerPass)
        var recent = 0, excluded = 0, damaged = 0, pinned = 0, seen = 0
        var linked = Set<InodeKey>()
        let nowNs = wallNanos()
        var unreadable: [WalkFailure] = []
        TreeWalker.walkWhile(fs.path, device: fs.device, failed: { unreadable.append($0) }) { path, st in
            if stopping.load(ordering: .relaxed) { return false }
            guard st.fileType == .regular else { return true }
            seen += 1
            // Several names of one inode: one candidate.
            if st.linkCount > 1 && !linked.insert(st.inodeKey).inserted { return true }
            let marker = st.allocatedBytes > 0 ? try? Xattr.get(path: path, Marker.xattrName) : nil
            switch WatermarkRules.classify(path: path, stat: st, markerBytes: marker, policy: policy, minAgeSeconds: w.minAgeSeconds, nowNs: nowNs) {
            case .success(let c):
                // Checked only for a candidate: one xattr read, not one per file walked.
                if Archiver.isPinned(path: path) { pinned += 1 } else if c.action == .release { releases.offer(c) } else { migrations.offer(c) }
            case .failure(.policy(let why)): if why.hasPrefix("used in the last") { recent += 1 } else { excluded += 1 }
            case .failure(.damaged): damaged += 1
            case .failure: break
            }
            return true
        }
        out.skips = "\(seen) files looked at: \(recent) used within \(Units.formatDuration(max(policy.olderThanSeconds ?? 0, w.minAgeSeconds))), \(excluded) excluded or smaller than the policy's min_size, \(pinned) pinned, \(damaged) damaged\(unreadable.first.map { "; \(unreadable.count) entries could not be read (first: \($0.path): \($0.reason))" } ?? "")"

        func belowLow() -> Bool {
            if let u = usage(fs) { out.end = SpaceUsage.during(start: start, now: u, freed: out.freed) }
            return out.end.isBelow(percent: w.lowPercent)
        }
        /// The candidate as it is now, if it is still eligible for the same action.
        func stillEligible(_ c: SpaceCandidate) -> Bool {
            guard let st = try? FileStat.of(path: c.path) else { return false }
            let marker = try? Xattr.get(path: c.path, Marker.xattrName)
            guard case .success(let now) = WatermarkRules.classify(path: c.path, stat: st, markerBytes: marker, policy: policy,
                                                                   minAgeSeconds: w.minAgeSeconds, nowNs: wallNanos()) else { return false }
            return now.action == c.action
        }
        func releaseChecked(_ c: SpaceCandidate) {
            guard stillEligible(c) else { return }
            let r = archiver.release(c.path)
            out.freed += r.bytesFreed
            if r.outcome == .done && r.bytesFreed > 0 { out.released += 1 } else if r.outcome == .failed { out.notDone += 1 }
        }

        var reachedLow = false
        for c in releases.ordered() {
            if stopping.load(ordering: .relaxed) { break }
            if belowLow() { reachedLow = true; break }
            releaseChecked(c)
        }
        let archivedBefore = out.released
        if !reachedLow && !belowLow() {
            let list = migrations.ordered()
            var i = 0
            while i < list.count && !stopping.load(ordering: .relaxed) {
                if belowLow() { break }
                // As many files as still need freeing, at most a chunk: one store flush each.
                let remaining = out.end.bytesToFree(below: w.lowPercent)
                var chunk: [SpaceCandidate] = [], bytes: Int64 = 0
                while i < list.count && chunk.count < Self.migrateChunk && bytes < remaining {
                    if stillEligible(list[i]) { chunk.append(list[i]); bytes += list[i].bytes }
                    i += 1
                }
                guard !chunk.isEmpty else { continue }
                // Archive only; each release comes after one more look at the file's age.
                let archived = archiver.archiveMany(chunk.map(\.path), jobs: 2, release: false)
                let ok = Set(archived.filter { $0.outcome == .done }.map(\.path))
                out.notDone += archived.count - ok.count
                for c in chunk where ok.contains(c.path) {
                    // Files archived but not needed stay archived: the cheapest to free next time.
                    if stopping.load(ordering: .relaxed) || belowLow() { break }
                    releaseChecked(SpaceCandidate(path: c.path, lastUsedNs: c.lastUsedNs, bytes: c.bytes, action: .release))
                }
            }
        }
        out.migrated = out.released - archivedBefore
        out.released = archivedBefore
        if fs.type == "btrfs" && out.freed > 0 {
            // Commit, so that statvfs (the next look's, and the line's) counts what was freed.
            do { try FileDescriptor(rawValue: fs.rootFD, path: fs.path).syncFilesystem() } catch {
                log.warning("watermarks: \(error); the next look may count space this pass freed as used")
            }
        }
        _ = belowLow()
        let seconds = Double(monotonicNanos() - started) / 1e9
        out.line = "\(start.description) used (high \(w.highPercent)%): released \(out.released) archived file(s), migrated \(out.migrated), "
            + "\(Units.formatBytes(out.freed)) freed, \(out.notDone) not done; now \(out.end.description) (low \(w.lowPercent)%)"
            + (out.end.isBelow(percent: w.lowPercent) ? "" : ", still above the low mark")
            + String(format: ", %.1f s", seconds)
        return out
    }

    private func wallNanos() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let (s, o) = Int64(ts.tv_sec).multipliedReportingOverflow(by: 1_000_000_000)
        return o ? Int64.max : s + Int64(ts.tv_nsec)
    }
}
