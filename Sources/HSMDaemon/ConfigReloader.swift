import HSMCore
import Logging

/// A config reload (SIGHUP, `systemctl reload hsmd`): reads the file again and either
/// applies its reloadable keys (ConfigReload.keys) or refuses the whole change, keeping
/// the running config, with a log line that says why. Nothing in flight is dropped: the
/// new values are taken by the next event or request.
struct ConfigReloader {
    let path: String?
    let logLevel: LogLevelSwitch?
    let log: Logger
    /// Hands the new config to the parts that read reloadable keys.
    let apply: (Config) -> Void

    /// `running` is replaced by the new config only when it is applied.
    func reload(_ running: inout Config) {
        let metrics = DaemonMetrics.shared.reloads
        guard let path else {
            log.warning("SIGHUP: no config file to reload (hsmd was started without one); nothing changed")
            return
        }
        let new: Config
        do { new = try Config.load(path: path) } catch {
            metrics.child("refused").add()
            log.error("config reload refused: \(error); the running config stays in force")
            return
        }
        switch ConfigReload.verdict(running: running, new: new) {
        case .needsRestart(let keys):
            metrics.child("refused").add()
            let details = ConfigReload.details(running: running, new: new)
            let what = details.isEmpty ? "" : " (\(details.joined(separator: ", ")))"
            log.error("config reload refused: \(keys.joined(separator: ", ")) changed\(what); \(keys.count == 1 ? "that key needs" : "those keys need") a restart (systemctl restart hsmd); the running config stays in force")
        case .apply(let changed):
            metrics.child("applied").add()
            apply(new)
            var notes: [String] = []
            var newLevel: Logger.Level?
            if changed.contains("log_level") {
                if let logLevel, logLevel.pinnedByCommandLine {
                    notes.append("log_level stays \(logLevel.level.rawValue) (set by --log-level)")
                } else {
                    newLevel = Logger.Level(rawValue: new.logLevel)
                }
            }
            running = new
            let list = changed.isEmpty ? "nothing changed" : "changed \(changed.joined(separator: ", "))"
            // Said before a quieter level takes effect, so the line is always there.
            log.notice("config reloaded from \(path): \(list)\(notes.isEmpty ? "" : "; " + notes.joined(separator: "; "))")
            if let newLevel { logLevel?.level = newLevel }
        }
    }
}
