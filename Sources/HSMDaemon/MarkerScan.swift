import Foundation
import Glibc
import HSMCore
import HSMKernel

/// Which objects the markers on the managed filesystems name, by a walk: what gc must
/// never delete, and what import must not make a second stub for. Every failure is
/// kept (a partial walk would make live objects look orphaned); the walk goes into btrfs
/// subvolumes (other st_dev, same filesystem), never into other mounts.
struct MarkerScan {
    /// Object → one path whose marker names it.
    var named: [ObjectID: String] = [:]
    /// What could not be read: the scan is incomplete when this is not empty.
    var failures: [FileResult] = []
    var files = 0
    /// Where filesystems are mounted now (/proc/self/mountinfo): a directory with another
    /// st_dev is walked unless it is one of these.
    private let mountPoints: Set<String> = MarkerScan.currentMountPoints()

    static func currentMountPoints() -> Set<String> {
        guard let fd = try? FileDescriptor.open("/proc/self/mountinfo", [.readOnly]) else { return [] }
        defer { fd.close() }
        let text = String(decoding: (try? fd.readAll(limit: 64 << 20)) ?? [], as: UTF8.self)
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 4 else { continue }
            out.insert(unescape(String(fields[4])))
        }
        return out
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo.
    private static func unescape(_ s: String) -> String {
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 3 < u.count,
               let v = UInt8(String(decoding: u[i + 1...i + 3], as: UTF8.self), radix: 8) {
                bytes.append(v)
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Test-only: a gate file; once the first directory of a walk is listed, the walk
    /// creates GATE.reached and waits (at most a minute) until GATE is gone, so a test can
    /// move a file while the walk is in its middle.
    static let testGate = ProcessInfo.processInfo.environment["HSMD_TEST_GC_WALK_GATE"]
    var gated = MarkerScan.testGate != nil

    /// Walks the tree at `root` (a directory on filesystem `device`).
    mutating func walk(_ root: String, device: UInt64) {
        TreeWalker.walk(root, device: device, subvolumesOf: mountPoints, listed: { _ in
            if gated, let gate = Self.testGate {
                gated = false
                Self.wait(at: gate)
            }
        }, failed: { failures.append(FileResult(path: $0.path, outcome: .failed, reason: $0.reason)) }) { p, st in
            if st.fileType == .regular { file(p) }
        }
    }

    private static func wait(at gate: String) {
        if let fd = try? FileDescriptor.open(gate + ".reached", [.writeOnly, .create]) { fd.close() }
        for _ in 0..<6000 where (try? FileStat.of(path: gate)) != nil { usleep(10_000) }
    }

    /// The files directly in `dir` (a directory the change journal says changed).
    mutating func scanOne(_ dir: String) {
        let names: [String]
        do { names = try Directory.entries(dir) } catch {
            if error.errno == ENOENT { return }
            failures.append(FileResult(path: dir, outcome: .failed, reason: "cannot read directory: \(error)"))
            return
        }
        for name in names {
            let p = dir == "/" ? "/" + name : dir + "/" + name
            if let st = try? FileStat.of(path: p), st.fileType == .regular { file(p) }
        }
    }

    private mutating func file(_ p: String) {
        files += 1
        let raw: [UInt8]?
        do { raw = try Xattr.get(path: p, Marker.xattrName) } catch {
            if error.errno != ENOENT { failures.append(FileResult(path: p, outcome: .failed, reason: "reading its marker: \(error)")) }
            return
        }
        guard let raw else { return }
        do { named[try MarkerCodec.decode(raw).object] = p } catch {
            failures.append(FileResult(path: p, outcome: .failed, reason: "damaged marker (\(error)): which object it names is unknown; repair or remove its trusted.hsm xattr",
                                       state: .damaged))
        }
    }
}
