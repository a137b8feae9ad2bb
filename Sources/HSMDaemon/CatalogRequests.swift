import HSMCore
import Logging

/// Serves `report` and `check` from the catalog (and, for check, the markers and stores).
struct CatalogRequests {
    let catalog: Catalog?
    let filesystems: ManagedFilesystems
    let log: Logger

    func serve(_ request: ControlRequest) -> ControlReply {
        switch request.op {
        case .report: return report(request)
        case .check: return check(request)
        default: return ControlReply(type: .error, message: "not a catalog request: \(request.op.rawValue)")
        }
    }

    private func report(_ request: ControlRequest) -> ControlReply {
        guard let catalog else {
            return ControlReply(type: .error, message: "hsmd has no catalog (it could not be created in state_dir; see hsmd's log)")
        }
        let chosen: [ManagedFilesystem]
        do { chosen = try CatalogCheck(filesystems: filesystems, catalog: catalog, log: log).select(request.paths) } catch {
            return ControlReply(type: .error, message: error.description)
        }
        // Paths name filesystems here: with PATH, only that filesystem and its store.
        let wanted = request.paths.isEmpty ? chosen : chosen.filter { fs in
            request.paths.contains { ($0 + "/").hasPrefix(fs.path == "/" ? "/" : fs.path + "/") }
        }
        catalog.flush()
        do {
            var r = try catalog.database.report(filesystems: wanted.map { ($0.path, $0.store.name) })
            r.notes = catalog.notes
            var reply = ControlReply(type: .result)
            reply.catalog = r
            return reply
        } catch {
            return ControlReply(type: .error, message: "reading the catalog failed: \(error); run hsmctl check --repair")
        }
    }

    private func check(_ request: ControlRequest) -> ControlReply {
        let options = CatalogCheck.Options(scrub: request.scrub ?? false, repair: request.repair ?? false,
                                           rateBytesPerSecond: request.rate)
        do {
            let r = try CatalogCheck(filesystems: filesystems, catalog: catalog, log: log).run(paths: request.paths, options: options)
            if !r.discrepancies.isEmpty {
                log.notice("check found \(r.discrepancies.count) discrepancies on \(r.filesystems.joined(separator: ", "))")
            }
            var reply = ControlReply(type: .result)
            reply.check = r
            return reply
        } catch {
            // Not a usage error: the check could not be made (hsmctl exits 3).
            var r = CheckReport()
            r.failure = error.description
            var reply = ControlReply(type: .result)
            reply.check = r
            return reply
        }
    }
}
