import Foundation
import Glibc
import HSMCore
import HSMKernel
import HSMStores
import Logging
import Synchronization

/// `hsmctl check`: reconciles the markers (a walk), the catalog and each store's listing,
/// optionally reads every stored block of the objects markers refer to (scrub), and
/// optionally rebuilds the catalog from what it found (repair). It never deletes or
/// changes data or markers.
struct CatalogCheck: Sendable {
    let filesystems: ManagedFilesystems
    let catalog: Catalog?
    let log: Logger

    struct Options: Sendable {
        var scrub = false
        var repair = false
        /// Scrub's read rate limit in bytes per second (nil: as fast as idle I/O goes).
        var rateBytesPerSecond: Int64?
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// One regular file seen by the walk.
    private struct Seen {
        let path: String
        let handle: [UInt8]?
        let stat: FileStat
        let marker: Marker?
        let markerError: String?
        /// Its pin (`hsmctl pin`); an unreadable one counts as not pinned here (the
        /// catalog's figure, not a guard: release reads the pin itself).
        let pinned: Bool
    }

    /// The filesystems `paths` select (all when empty), plus every other filesystem that
    /// shares a store with one of them: an orphan is only an orphan of every marker.
    func select(_ paths: [String]) throws(Failure) -> [ManagedFilesystem] {
        guard !paths.isEmpty else { return filesystems.all }
        var chosen: [ManagedFilesystem] = []
        for p in paths {
            let st: FileStat
            do { st = try FileStat.of(path: p, followLinks: true) } catch { throw Failure(description: "\(p): \(error)") }
            guard let fs = filesystems.filesystem(device: st.device) else {
                throw Failure(description: "\(p) is not on a managed filesystem (managed: \(filesystems.pathsDescription))")
            }
            if !chosen.contains(where: { $0.path == fs.path }) { chosen.append(fs) }
        }
        let stores = Set(chosen.map(\.store.name))
        for fs in filesystems.all where stores.contains(fs.store.name) && !chosen.contains(where: { $0.path == fs.path }) {
            chosen.append(fs)
        }
        return chosen
    }

    func run(paths: [String], options: Options) throws(Failure) -> CheckReport {
        let chosen = try select(paths)
        if options.repair && catalog == nil {
            throw Failure(description: "hsmd has no catalog (it could not be created in state_dir; see hsmd's log): nothing to repair")
        }
        var report = CheckReport()
        report.filesystems = chosen.map(\.path)
        let walkStarted = unixMillis()
        // Updates arriving during the walk are newer than what it sees: they go in after
        // the rebuilt rows.
        catalog?.flush()
        if options.repair { catalog?.holdUpdates() }
        var holding = options.repair
        defer { if holding { catalog?.releaseHold() } }

        // 1. The markers.
        var seen: [String: [Seen]] = [:]
        /// What the walk of each filesystem could not read: below those paths nothing was
        /// seen, so nothing there may be called missing (an orphan, a deleted file's row).
        var unread: [String: [WalkFailure]] = [:]
        for fs in chosen {
            var files: [Seen] = []
            var handles = Set<[UInt8]>()
            TreeWalker.walk(fs.path, device: fs.device, failed: { unread[fs.path, default: []].append($0) }) { p, st in
                guard st.fileType == .regular else { return }
                report.filesWalked += 1
                let handle = (try? InodeHandle.of(path: p))?.encoded
                // Several names of one inode (hard links): one file.
                if let handle, !handles.insert(handle).inserted { return }
                var marker: Marker?, problem: String?
                do {
                    if let raw = try Xattr.get(path: p, Marker.xattrName) { marker = try MarkerCodec.decode(raw) }
                } catch { problem = "\(error)" }
                if marker != nil || problem != nil { report.markers += 1 }
                let pinned = ((try? Xattr.get(path: p, Pin.xattrName)) ?? nil) != nil
                files.append(Seen(path: p, handle: handle, stat: st, marker: marker, markerError: problem, pinned: pinned))
            }
            seen[fs.path] = files
            for f in unread[fs.path] ?? [] {
                report.discrepancies.append(.init(kind: .unreadable, path: f.path, store: fs.store.name,
                    meaning: "not checked: \(f.reason). The files below it were not looked at, so no object of store \(fs.store.name) is called an orphan, and --repair keeps the catalog's rows of files it did not see. Make it readable (a path longer than PATH_MAX: move the tree higher) and check again"))
            }
        }
        /// Stores whose filesystems were not walked in full: any of their objects may be
        /// named by a marker the walk did not see.
        let unvouched = Set(chosen.filter { !(unread[$0.path] ?? []).isEmpty }.map(\.store.name))

        // 2. The stores' listings, after the walk: every object a walked marker names was
        // complete before the walk read that marker.
        var listed: [String: Set<String>] = [:]
        var storeOf: [String: any ObjectStore] = [:]
        for fs in chosen where storeOf[fs.store.name] == nil {
            storeOf[fs.store.name] = fs.store
            if let problem = fs.store.healthProblem() { throw Failure(description: "cannot check against the store: \(problem)") }
            do { listed[fs.store.name] = Set(try fs.store.list().map(\.hex)) } catch {
                throw Failure(description: "store \(fs.store.name): listing its objects failed: \(error)")
            }
            report.objectsListed += Int64(listed[fs.store.name]?.count ?? 0)
        }

        // 3. Markers against the stores.
        var referenced: [String: Set<String>] = [:]
        var referrer: [String: (path: String, handle: [UInt8]?, fs: String)] = [:]
        for fs in chosen {
            let have = listed[fs.store.name] ?? []
            for f in seen[fs.path] ?? [] {
                if let why = f.markerError {
                    report.discrepancies.append(.init(kind: .damagedMarker, path: f.path, store: fs.store.name,
                        meaning: "damaged: its trusted.hsm marker cannot be decoded (\(why)); reads of its offline data fail with EIO. If its data is all local, remove the marker (setfattr -x trusted.hsm) and archive it again; otherwise restore the file from a backup"))
                    continue
                }
                guard let m = f.marker else { continue }
                let id = m.object.hex
                referenced[fs.store.name, default: []].insert(id)
                if referrer[id] == nil { referrer[id] = (f.path, f.handle, fs.path) }
                if !have.contains(id) && stillMissing(f.path, object: m.object, store: fs.store) {
                    let offline = m.offlineBytes(currentSize: f.stat.size)
                    let meaning = offline > 0
                        ? "damaged: its marker names object \(id), which store \(fs.store.name) does not have; \(Units.formatBytes(offline)) of its data are offline and reads of them fail with EIO. Put the object back into the store (from a backup of the store), or restore the file"
                        : "its marker names object \(id), which store \(fs.store.name) does not have; all its data is local, so nothing is lost, but it has no stored copy: archive it again (hsmctl archive) after removing the marker"
                    report.discrepancies.append(.init(kind: .missingObject, path: f.path, object: id, store: fs.store.name, meaning: meaning))
                }
            }
        }
        // Objects of archives under way (the new one's marker is not written yet; the one
        // it replaces is about to be deleted), read from the notes on disk (a separate
        // reader: it changes nothing).
        let underWay = Set(InProgress(stateDir: filesystems.stateDir).pending().flatMap { [$0.entry?.object, $0.entry?.previous].compactMap { $0 } })
        for (name, have) in listed where !unvouched.contains(name) {
            for id in have.subtracting(referenced[name] ?? []).sorted() where !underWay.contains(id) {
                guard let store = storeOf[name], let oid = ObjectID(hex: id) else { continue }
                // Its file names it now (archived after the walk passed it): not an orphan.
                let record = try? store.storedRecord(oid)
                if let r = record, markerNames(r.path, oid) { continue }
                // Deleted meanwhile (the stale object of a re-archive): nothing to report.
                if !store.contains(oid) { continue }
                report.discrepancies.append(.init(kind: .orphan, path: record?.path, object: id, store: name,
                    meaning: "orphan: no marker on \(chosen.filter { $0.store.name == name }.map(\.path).joined(separator: ", ")) refers to it\(record.map { " (archived from \($0.path), \(Units.formatBytes($0.storedBytes)))" } ?? ""); its file was deleted or archived again. It can be deleted once no backup of the filesystem could bring its marker back"))
            }
        }

        // 4. The catalog against both.
        if let catalog {
            // What was queued during the walk is in before the rows are read.
            catalog.flush()
            compareCatalog(catalog, chosen, seen, listed, unread, walkStarted: walkStarted, &report)
        }

        // 5. Scrub: every stored block of every referenced object, at idle priority.
        if options.scrub {
            // Objects missing from the listing are reported above already.
            let jobs = referenced.flatMap { name, ids in ids.intersection(listed[name] ?? []).sorted().map { (name, $0) } }
            let found = scrub(jobs, stores: storeOf, referrer: referrer.mapValues(\.path), rate: options.rateBytesPerSecond)
            report.scrubbedObjects = found.objects
            report.scrubbedBytes = found.bytes
            report.discrepancies += found.discrepancies
        }

        // 6. Repair: the catalog rebuilt from the markers and the stores' records.
        if options.repair, let catalog {
            var files: [CatalogFile] = []
            let now = unixMillis()
            for fs in chosen {
                let have = listed[fs.store.name] ?? []
                for f in seen[fs.path] ?? [] {
                    guard let handle = f.handle else { continue }
                    var state: HSMState, offline: Int64 = 0
                    if f.markerError != nil { state = .damaged } else {
                        let s = FileStatus.derive(stat: f.stat, marker: f.marker, objectExists: { have.contains($0.hex) })
                        state = s.state
                        offline = s.offlineBytes
                        if let m = f.marker, !have.contains(m.object.hex) { state = .damaged }
                    }
                    files.append(CatalogFile(fs: fs.path, handle: handle, path: f.path, state: state, size: f.stat.size,
                                             offlineBytes: offline, object: f.marker?.object.hex, updatedAt: now, pinned: f.pinned))
                }
                // Rows of files the walk did not see are kept as they were: any of them may
                // be below what it could not read (a row's path is where the file was
                // last seen, and a rename since is not in it).
                if !(unread[fs.path] ?? []).isEmpty {
                    let walked = Set((seen[fs.path] ?? []).compactMap(\.handle))
                    let rows: [CatalogFile]
                    do { rows = try catalog.database.files(fs: fs.path) } catch {
                        throw Failure(description: "the walk of \(fs.path) was incomplete and the catalog's rows, which the rebuild must keep for what it could not see, cannot be read: \(error); nothing rebuilt")
                    }
                    files += rows.filter { !walked.contains($0.handle) }
                }
            }
            var objects: [CatalogObject] = []
            for (name, have) in listed {
                guard let store = storeOf[name] else { continue }
                for id in have.sorted() {
                    guard let oid = ObjectID(hex: id), let r = try? store.storedRecord(oid) else { continue }
                    let who = referrer[id]
                    objects.append(CatalogObject(id: id, store: name, handle: who?.handle, fs: who?.fs, path: r.path, size: r.size,
                                                 storedBytes: r.storedBytes, archivedAt: r.archivedAt))
                }
            }
            holding = false
            do { try catalog.replaceAll(files: files, objects: objects) } catch {
                throw Failure(description: "rebuilding the catalog failed: \(error)")
            }
            report.repaired = true
            log.notice("catalog rebuilt from the markers and the stores: \(files.count) files, \(objects.count) objects")
        }
        return report
    }

    /// The rebuild hsmd runs by itself (Catalog.start): the whole of check --repair.
    static func rebuilder(_ catalog: Catalog, filesystems: ManagedFilesystems, log: Logger) -> @Sendable () -> Void {
        { [weak catalog] in
            guard let catalog else { return }
            do {
                let report = try CatalogCheck(filesystems: filesystems, catalog: catalog, log: log).run(paths: [], options: Options(repair: true))
                let unreadable = report.discrepancies.filter { $0.kind == .unreadable }
                if let first = unreadable.first {
                    log.warning("catalog rebuild: \(unreadable.count) paths could not be read (first: \(first.path ?? ""): \(first.meaning))")
                }
            } catch {
                log.error("catalog rebuild failed: \(error); run hsmctl check --repair")
            }
        }
    }

    /// Re-reads the marker and the store before calling an object missing: the file may
    /// have been archived again since the walk.
    private func stillMissing(_ path: String, object: ObjectID, store: any ObjectStore) -> Bool {
        guard let raw = try? Xattr.get(path: path, Marker.xattrName), let m = try? MarkerCodec.decode(raw), m.object == object else { return false }
        return !store.contains(object)
    }

    private func markerNames(_ path: String, _ id: ObjectID) -> Bool {
        guard let raw = try? Xattr.get(path: path, Marker.xattrName), let m = try? MarkerCodec.decode(raw) else { return false }
        return m.object == id
    }

    private func compareCatalog(_ catalog: Catalog, _ chosen: [ManagedFilesystem], _ seen: [String: [Seen]],
                                _ listed: [String: Set<String>], _ unread: [String: [WalkFailure]], walkStarted: Int64,
                                _ report: inout CheckReport) {
        for fs in chosen {
            let rows: [CatalogFile]
            do { rows = try catalog.database.files(fs: fs.path) } catch {
                report.discrepancies.append(.init(kind: .staleCatalog, meaning: "the catalog cannot be read (\(error)); run hsmctl check --repair"))
                return
            }
            report.catalogRows += Int64(rows.count)
            var byHandle: [[UInt8]: CatalogFile] = [:]
            for r in rows { byHandle[r.handle] = r }
            let have = listed[fs.store.name] ?? []
            var walked = Set<[UInt8]>()
            for f in seen[fs.path] ?? [] {
                guard let h = f.handle else { continue }
                walked.insert(h)
                let row = byHandle[h]
                if let row, row.updatedAt < walkStarted, (row.pinned ?? false) != f.pinned {
                    report.discrepancies.append(.init(kind: .staleCatalog, path: f.path, object: f.marker?.object.hex,
                        meaning: "stale catalog row: it says \(f.pinned ? "not pinned" : "pinned"), the file is \(f.pinned ? "pinned" : "not pinned"); run hsmctl check --repair"))
                }
                guard f.marker != nil || f.markerError != nil else {
                    // A file with no marker and no row is simply resident: the catalog
                    // learns of those at a repair. A row that still names an object is stale.
                    if let row, row.object != nil, row.updatedAt < walkStarted {
                        report.discrepancies.append(.init(kind: .staleCatalog, path: f.path, object: row.object,
                            meaning: "stale catalog row: it says \(row.state.rawValue) with object \(row.object ?? ""), but the file has no marker (resident); run hsmctl check --repair"))
                    }
                    continue
                }
                var expected: HSMState = .damaged
                if f.markerError == nil {
                    expected = FileStatus.derive(stat: f.stat, marker: f.marker, objectExists: { have.contains($0.hex) }).state
                }
                guard let row else {
                    report.discrepancies.append(.init(kind: .staleCatalog, path: f.path, object: f.marker?.object.hex,
                        meaning: "stale catalog: the file (\(expected.rawValue)) has no catalog row, so report leaves it out; run hsmctl check --repair"))
                    continue
                }
                if row.updatedAt >= walkStarted { continue }
                // The catalog learns of a missing object or a write to an archived file
                // only at a check: those mismatches are the discrepancies above, not the
                // catalog's fault, and are not repeated here.
                if row.object != f.marker?.object.hex
                    || (row.state != expected && ![HSMState.damaged, .dirty].contains(expected)) {
                    report.discrepancies.append(.init(kind: .staleCatalog, path: f.path, object: f.marker?.object.hex,
                        meaning: "stale catalog row: it says \(row.state.rawValue)\(row.object.map { " with object \($0)" } ?? ""), the marker says \(expected.rawValue)\(f.marker.map { " with object \($0.object.hex)" } ?? ""); run hsmctl check --repair"))
                }
            }
            // A walk that could not read everything cannot tell a deleted file from one it did not see.
            for r in rows where !walked.contains(r.handle) && r.updatedAt < walkStarted && (unread[fs.path] ?? []).isEmpty {
                report.discrepancies.append(.init(kind: .staleCatalog, path: r.path, object: r.object,
                    meaning: "stale catalog row: the file it names (last seen at \(r.path ?? "an unknown path")) is no longer on \(fs.path) (deleted); run hsmctl check --repair"))
            }
        }
        var storesDone = Set<String>()
        for fs in chosen where storesDone.insert(fs.store.name).inserted {
            guard let rows = try? catalog.database.objects(store: fs.store.name) else { continue }
            let have = listed[fs.store.name] ?? []
            let candidates = rows.filter { !have.contains($0.id) }
            if candidates.isEmpty { continue }
            // Archived after the listing, or deleted with its row still queued: asked again
            // once what is queued is written.
            catalog.flush()
            let still = Set(((try? catalog.database.objects(store: fs.store.name)) ?? []).map(\.id))
            for r in candidates where still.contains(r.id) && !(ObjectID(hex: r.id).map(fs.store.contains) ?? false) {
                report.discrepancies.append(.init(kind: .staleCatalog, path: r.path, object: r.id, store: fs.store.name,
                    meaning: "stale catalog row: object \(r.id) is in the catalog but not in store \(fs.store.name); run hsmctl check --repair"))
            }
        }
    }

    private struct ScrubResult: Sendable {
        var objects: Int64 = 0
        var bytes: Int64 = 0
        var discrepancies: [CheckReport.Discrepancy] = []
    }

    /// Reads every block of the objects on a thread of its own at idle CPU and I/O
    /// priority (ioprio_set IOPRIO_CLASS_IDLE), at most `rate` bytes per second.
    private func scrub(_ jobs: [(String, String)], stores: [String: any ObjectStore], referrer: [String: String], rate: Int64?) -> ScrubResult {
        let result = Mutex(ScrubResult())
        let done = DispatchSemaphore(value: 0)
        let log = self.log
        startThread("hsmd-scrub") {
            defer { done.signal() }
            do { try setThreadIdlePriority() } catch { log.warning("scrub: cannot lower its priority (\(error)); scrubbing at normal priority") }
            let started = monotonicNanos()
            var bytes: Int64 = 0
            for (name, id) in jobs {
                guard let store = stores[name], let oid = ObjectID(hex: id) else { continue }
                let path = referrer[id]
                func bad(_ what: String) {
                    result.withLock { $0.discrepancies.append(.init(kind: .corruptObject, path: path, object: id, store: name,
                        meaning: "corrupt: \(what); a recall of the affected blocks fails with EIO (the file is damaged where its data is offline). If the file's data is all local, archive it again; otherwise restore the object from a backup of the store")) }
                }
                let record: ObjectRecord
                do { record = try store.storedRecord(oid) } catch { bad("its record cannot be read: \(error)"); continue }
                let reader: any ObjectReader
                do { reader = try store.reader(for: record) } catch { bad("\(error)"); continue }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(record.layout.blockSize), alignment: 4096)
                for b in 0..<record.checksums.count where record.checksums[b] != nil {
                    do {
                        let n = try reader.read(block: b, into: buffer)
                        bytes += Int64(n)
                    } catch {
                        bad("block \(b): \(error)")
                        break
                    }
                    if let rate, rate > 0 {
                        // Sleep until the bytes read so far fit the rate.
                        let due = UInt64(Double(bytes) / Double(rate) * 1e9)
                        let elapsed = monotonicNanos() - started
                        if due > elapsed { usleep(UInt32(min((due - elapsed) / 1000, 5_000_000))) }
                    }
                }
                buffer.deallocate()
                reader.close()
                result.withLock { $0.objects += 1 }
            }
            result.withLock { $0.bytes = bytes }
        }
        done.wait()
        return result.withLock { $0 }
    }
}
