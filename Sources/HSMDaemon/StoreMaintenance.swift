import Synchronization

/// gc and import, one at a time: gc must not delete an orphan that an import is making a
/// stub for, and two imports must not race for one path.
enum StoreMaintenance {
    private static let running = Mutex<String?>(nil)

    /// Runs `body` unless another gc or import is running (then says which).
    static func exclusively<T>(_ what: String, _ body: () -> T) -> Result<T, MaintenanceBusy> {
        let busy = running.withLock { r -> String? in
            if let r { return r }
            r = what
            return nil
        }
        if let busy { return .failure(MaintenanceBusy(description: "hsmctl \(busy) is running; try again when it has finished")) }
        defer { running.withLock { $0 = nil } }
        return .success(body())
    }
}

struct MaintenanceBusy: Error, CustomStringConvertible {
    let description: String
}
