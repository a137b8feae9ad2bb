import Foundation
import HSMCore
import Logging

/// Fills a catalog with synthetic rows through the writer's own path (queue, batched
/// transactions), for scripts/bench-catalog.sh. Not used by hsmd's service.
public enum CatalogBench {
    /// `files` file rows on filesystem `fs` (and one object in store `store` for each file
    /// that is not resident), states spread over all six. Returns the seconds it took.
    public static func fill(stateDir: String, fs: String, store: String, files: Int, log: Logger) -> Double? {
        guard let catalog = Catalog.open(stateDir: stateDir, log: log) else { return nil }
        catalog.start()
        defer { catalog.stop() }
        let t0 = monotonicNanos()
        let states: [HSMState] = [.released, .released, .released, .archived, .archived, .partial, .resident, .dirty, .damaged, .released]
        let chunk = 20_000
        var i = 0
        let now = Int64(Date().timeIntervalSince1970)
        while i < files {
            for k in i..<min(i + chunk, files) {
                let state = states[k % states.count]
                let size = Int64(4096 + (k % 1000) * 1024)
                var handle: [UInt8] = [1, 0, 0, 0]
                withUnsafeBytes(of: UInt64(k).littleEndian) { handle += $0 }
                let id = state == .resident ? nil : String(format: "%016llx%016llx", UInt64(k), UInt64(k) &* 0x9E37_79B9_7F4A_7C15)
                if let id {
                    catalog.enqueue(.object(CatalogObject(id: id, store: store, handle: handle, fs: fs, path: "\(fs)/d\(k / 1000)/f\(k)",
                                                          size: size, storedBytes: size, archivedAt: now - Int64(k))))
                }
                let offline: Int64 = state == .released ? size : (state == .partial ? size / 2 : 0)
                catalog.enqueue(.file(CatalogFile(fs: fs, handle: handle, path: "\(fs)/d\(k / 1000)/f\(k)", state: state, size: size,
                                                  offlineBytes: offline, object: id, updatedAt: unixMillis())))
            }
            i += chunk
            catalog.flush(timeout: 600)
        }
        return Double(monotonicNanos() - t0) / 1e9
    }
}
