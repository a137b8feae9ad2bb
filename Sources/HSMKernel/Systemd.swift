import CHSMKernel
import Foundation
import Glibc

public enum SystemdNotify {
    /// READY=1, STOPPING=1, WATCHDOG=1, STATUS=…; a no-op without $NOTIFY_SOCKET.
    @discardableResult
    public static func send(_ state: String) -> Bool { chsm_sd_notify(state) == 0 }

    /// Whether hsmd runs under a service manager that listens (NOTIFY_SOCKET is set).
    public static var isAvailable: Bool {
        !(ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] ?? "").isEmpty
    }

    /// Hands `fd` to systemd's fd store under `name` (FDSTORE=1): systemd keeps a dup of
    /// it while the service restarts and passes it back through LISTEN_FDS. Needs
    /// FileDescriptorStoreMax= in the unit; without it systemd drops the fd (and logs so).
    public static func store(fd: Int32, name: String) throws(SystemError) {
        var fds = [fd]
        try SystemError.check(chsm_sd_notify_fds("FDSTORE=1\nFDNAME=\(name)", &fds, 1), "sd_notify(FDSTORE=1, \(name))")
    }
}

/// The fds systemd passed this process (sd_listen_fds_with_names): LISTEN_PID must be ours,
/// fds start at 3, LISTEN_FDNAMES names them. The variables are removed once read, so no
/// child inherits them, and every fd gets FD_CLOEXEC.
public enum ListenFDs {
    public struct Passed: Sendable {
        public let name: String
        public let fd: Int32
    }

    public static func take() -> [Passed] {
        let env = ProcessInfo.processInfo.environment
        defer { for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(v) } }
        guard let pid = env["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
              let count = env["LISTEN_FDS"].flatMap(Int.init), count > 0, count <= 1024 else { return [] }
        let names = (env["LISTEN_FDNAMES"] ?? "").split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        var out: [Passed] = []
        for i in 0..<count {
            let fd = Int32(3 + i)
            guard chsm_fd_is_open(fd) == 1 else { continue }
            _ = chsm_fd_set_cloexec(fd)
            out.append(Passed(name: i < names.count ? names[i] : "unknown", fd: fd))
        }
        return out
    }
}

public enum FDNumbers {
    /// Occupies fd number `n` (with /dev/null) so that no new event gets it until it is
    /// closed; false when it is already open in this process (then it is taken anyway).
    public static func reserve(_ n: Int32) throws(SystemError) -> Bool {
        let r = chsm_reserve_fd_number(n)
        if r == -EBUSY { return false }
        try SystemError.check(r, "reserve fd number \(n)")
        return true
    }
}
