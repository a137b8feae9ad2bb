import ArgumentParser
import Foundation
import Glibc
import HSMCore
import HSMDaemon
import Logging

struct HSMD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsmd",
        abstract: "Hierarchical storage manager daemon: recalls offline file data on access.",
        discussion: "Reads its configuration from --config (TOML); see Config/hsmd.toml for every key.",
        version: Daemon.version)

    @Option(name: .long, help: "Configuration file (TOML).")
    var config: String = "/etc/hsmd/hsmd.toml"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical (overrides log_level).")
    var logLevel: String?

    @Flag(name: .long, help: "Check the configuration and exit.")
    var checkConfig = false

    // For scripts/bench-catalog.sh only: fill state_dir's catalog with N synthetic rows
    // for the config's first filesystem and store, through the catalog's writer, and exit.
    @Option(name: .long, help: .hidden)
    var benchFillCatalog: Int?

    func run() throws {
        let cfg: Config
        do { cfg = try Config.load(path: config) } catch {
            FileHandle.standardError.write(Data("hsmd: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if let l = logLevel, !Config.logLevels.contains(l) {
            FileHandle.standardError.write(Data("hsmd: --log-level \(l) is not one of \(Config.logLevels.joined(separator: ", "))\n".utf8))
            throw ExitCode(2)
        }
        if let n = benchFillCatalog {
            guard let fs = cfg.filesystems.first, n > 0 else { throw ExitCode(2) }
            try? FileManager.default.createDirectory(atPath: cfg.stateDir, withIntermediateDirectories: true)
            guard let s = CatalogBench.fill(stateDir: cfg.stateDir, fs: fs.path, store: fs.store, files: n, log: Logger(label: "hsmd")) else {
                throw ExitCode(1)
            }
            print(String(format: "filled %d file rows in %.1f s", n, s))
            return
        }
        if checkConfig {
            print("\(config): OK (\(cfg.filesystems.count) filesystem(s), \(cfg.stores.count) store(s))")
            return
        }
        let level = Logger.Level(rawValue: logLevel ?? cfg.logLevel) ?? .info
        // One switch for every logger, so a config reload (SIGHUP) can change the level.
        let levelSwitch = LogLevelSwitch(level, pinnedByCommandLine: logLevel != nil)
        LoggingSystem.bootstrap { label in levelSwitch.handler(label: label) }
        // Everything hsmd creates for itself (state, store objects, temporary files) is
        // root's alone; modes given explicitly are narrowed, never widened.
        umask(0o077)
        let status = Daemon.run(config: cfg, log: Logger(label: "hsmd"), configPath: config, logLevel: levelSwitch)
        if status != 0 { throw ExitCode(status) }
    }
}

HSMD.main()
