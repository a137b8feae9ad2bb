import Glibc
import HSMCore

/// Every metric hsmd exports (README, "Metrics"). One process-wide instance: the counters
/// are bumped where things happen, the gauges of queues are read when scraped.
final class DaemonMetrics: Sendable {
    static let shared = DaemonMetrics()

    static let eventKinds = ["own_pid", "resident", "allowed_inline", "open", "access", "denied", "overflow", "no_fd"]
    static let outcomes = ["done", "skipped", "failed"]

    let events = MetricFamily<MetricCounter>(name: "hsmd_events_total", help: "Pre-content events read from the fanotify group, by what hsmd did with them.", labels: ["kind"]) { MetricCounter() }
    let recalls = MetricCounter()
    let recalledBytes = MetricCounter()
    let recallSeconds = MetricHistogram.latency()
    let recallFailures = MetricFamily<MetricCounter>(name: "hsmd_recall_failures_total", help: "Accesses denied because recall failed, by the errno the program got.", labels: ["errno"]) { MetricCounter() }
    let archives = MetricFamily<MetricCounter>(name: "hsmd_archives_total", help: "Files archive handled, by outcome.", labels: ["outcome"]) { MetricCounter() }
    let archivedBytes = MetricCounter()
    let releases = MetricFamily<MetricCounter>(name: "hsmd_releases_total", help: "Files release handled, by outcome.", labels: ["outcome"]) { MetricCounter() }
    let releasedBytes = MetricCounter()
    let storeSeconds = MetricFamily<MetricHistogram>(name: "hsmd_store_request_duration_seconds", help: "Time of requests to the stores, by store and operation.", labels: ["store", "op"]) { MetricHistogram.latency() }
    let storeErrors = MetricFamily<MetricCounter>(name: "hsmd_store_errors_total", help: "Store requests that failed, by store and operation.", labels: ["store", "op"]) { MetricCounter() }
    let reloads = MetricFamily<MetricCounter>(name: "hsmd_config_reloads_total", help: "Config reloads (SIGHUP), by result.", labels: ["result"]) { MetricCounter() }
    let jobsCancelled = MetricCounter()

    /// The event kinds' counters, looked up once (no lock per event).
    let eventOwnPid, eventResident, eventAllowedInline, eventOpen, eventAccess, eventDenied, eventOverflow, eventNoFD: MetricCounter

    private init() {
        let e = events
        eventOwnPid = e.child("own_pid"); eventResident = e.child("resident"); eventAllowedInline = e.child("allowed_inline")
        eventOpen = e.child("open"); eventAccess = e.child("access"); eventDenied = e.child("denied")
        eventOverflow = e.child("overflow"); eventNoFD = e.child("no_fd")
        for o in Self.outcomes { _ = archives.child(o); _ = releases.child(o) }
        for r in ["applied", "refused"] { _ = reloads.child(r) }
    }

    func recordArchive(_ r: FileResult) {
        // A file a cancelled job never started is no archive outcome.
        if r.reason == Job.cancelledReason { return }
        archives.child(r.outcome.rawValue).add(1)
        if r.outcome == .done { archivedBytes.add(signed: r.bytesArchived) }
    }

    func recordRelease(_ r: FileResult) {
        releases.child(r.outcome.rawValue).add(1)
        if r.outcome == .done { releasedBytes.add(signed: r.bytesFreed) }
    }

    func recordRecallFailure(errno e: Int32) {
        recallFailures.child(Self.errnoName(e)).add(1)
    }

    static func errnoName(_ e: Int32) -> String {
        switch e {
        case EIO: return "EIO"
        case ENOSPC: return "ENOSPC"
        case EDQUOT: return "EDQUOT"
        case EPERM: return "EPERM"
        case EBUSY: return "EBUSY"
        case EAGAIN: return "EAGAIN"
        case ETXTBSY: return "ETXTBSY"
        default: return "errno\(e)"
        }
    }

    /// What is read at scrape time rather than counted.
    struct Live {
        var queueDepth: Int64
        var recallsInFlight: Int64
        var jobsRunning: Int64
        var journalEvents: UInt64?
        var journalTransactions: UInt64?
        var journalOverflows: UInt64?
        var startTimeSeconds: Double
        /// Space per state, from the catalog's running totals (nil: no catalog).
        var space: CatalogReport? = nil
    }

    func exposition(_ live: Live) -> String {
        var w = PrometheusWriter()
        w.gauge("hsmd_start_time_seconds", "When this hsmd started, in seconds since the epoch.", live.startTimeSeconds)
        w.family(events)
        w.counter("hsmd_recalls_total", "Recalls that went to a store for data (accesses and hsmctl recall).", recalls)
        w.counter("hsmd_recalled_bytes_total", "Bytes recall wrote back into managed files.", recalledBytes)
        w.histogram("hsmd_recall_duration_seconds", "Time from an access's event to the data it needs being back (accesses that waited for a store).", recallSeconds)
        w.family(recallFailures)
        w.family(archives)
        w.counter("hsmd_archived_bytes_total", "Bytes archive stored.", archivedBytes)
        w.family(releases)
        w.counter("hsmd_released_bytes_total", "Bytes release freed on the managed filesystems.", releasedBytes)
        w.gauge("hsmd_recall_queue_depth", "Accesses taken from the kernel and not answered yet.", live.queueDepth)
        w.gauge("hsmd_recalls_in_flight", "Recalls copying data from a store now.", live.recallsInFlight)
        w.gauge("hsmd_jobs_running", "Archive, release, recall and migrate requests running now (hsmctl queue).", live.jobsRunning)
        w.counter("hsmd_jobs_cancelled_total", "Jobs cancelled (hsmctl cancel, or their hsmctl went away).", jobsCancelled)
        if let n = live.journalEvents {
            w.header("hsmd_journal_events_total", "counter", "Events the change journal read.")
            w.sample("hsmd_journal_events_total", [], String(n))
        }
        if let n = live.journalTransactions {
            w.header("hsmd_journal_transactions_total", "counter", "Database transactions the change journal committed.")
            w.sample("hsmd_journal_transactions_total", [], String(n))
        }
        if let n = live.journalOverflows {
            w.header("hsmd_journal_overflows_total", "counter", "Kernel queue overflows the change journal saw (each makes an epoch incomplete).")
            w.sample("hsmd_journal_overflows_total", [], String(n))
        }
        w.family(storeSeconds)
        w.family(storeErrors)
        w.family(reloads)
        if let space = live.space { Self.writeSpace(space, &w) }
        return w.text
    }

    /// Files and bytes per filesystem and state, and each store's objects, as the catalog
    /// knows them (hsmctl report: the same figures, the same lag).
    private static func writeSpace(_ r: CatalogReport, _ w: inout PrometheusWriter) {
        let states = HSMState.allCases.map(\.rawValue)
        w.header("hsmd_managed_files", "gauge", "Managed files per filesystem and state (the catalog's figures).")
        for fs in r.filesystems {
            for s in states { w.sample("hsmd_managed_files", [("filesystem", fs.path), ("state", s)], String(fs.states[s]?.files ?? 0)) }
        }
        w.header("hsmd_managed_bytes", "gauge", "Size of managed files per filesystem and state, in bytes (the catalog's figures).")
        for fs in r.filesystems {
            for s in states { w.sample("hsmd_managed_bytes", [("filesystem", fs.path), ("state", s)], String(fs.states[s]?.bytes ?? 0)) }
        }
        w.header("hsmd_offline_bytes", "gauge", "Bytes of managed files held only in the store, per filesystem.")
        for fs in r.filesystems { w.sample("hsmd_offline_bytes", [("filesystem", fs.path)], String(fs.offlineBytes)) }
        w.header("hsmd_pinned_files", "gauge", "Pinned files (hsmctl pin) per filesystem: release and the watermarks leave them.")
        for fs in r.filesystems { w.sample("hsmd_pinned_files", [("filesystem", fs.path)], String(fs.pinned.files)) }
        w.header("hsmd_pinned_bytes", "gauge", "Size of the pinned files per filesystem, in bytes.")
        for fs in r.filesystems { w.sample("hsmd_pinned_bytes", [("filesystem", fs.path)], String(fs.pinned.bytes)) }
        w.header("hsmd_store_objects", "gauge", "Objects in each store, as the catalog knows them.")
        for s in r.stores { w.sample("hsmd_store_objects", [("store", s.name)], String(s.objects)) }
        w.header("hsmd_store_bytes", "gauge", "Bytes stored in each store, as the catalog knows them.")
        for s in r.stores { w.sample("hsmd_store_bytes", [("store", s.name)], String(s.storedBytes)) }
        w.header("hsmd_store_orphan_objects", "gauge", "Objects no file refers to, per store (hsmctl gc deletes them past the grace).")
        for s in r.stores { w.sample("hsmd_store_orphan_objects", [("store", s.name)], String(s.orphans)) }
    }
}
