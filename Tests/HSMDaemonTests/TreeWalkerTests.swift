import Foundation
import Glibc
import XCTest
import HSMKernel

@testable import HSMDaemon

/// The one tree walk: everything it cannot read reaches the caller; nothing is dropped
/// silently.
final class TreeWalkerTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "treewalker-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root + "/a/b", withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/a/one", contents: Data()))
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/a/b/two", contents: Data()))
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/three", contents: Data()))
    }

    override func tearDownWithError() throws {
        // A tree deeper than PATH_MAX cannot be removed by path: by descriptor, bottom up.
        func removeAll(_ dirfd: Int32) {
            guard let dir = fdopendir(dup(dirfd)) else { return }
            var names: [String] = []
            while let e = readdir(dir) {
                let n = withUnsafePointer(to: &e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
                if n != "." && n != ".." { names.append(n) }
            }
            closedir(dir)
            for n in names {
                let sub = openat(dirfd, n, O_DIRECTORY | O_RDONLY | O_NOFOLLOW)
                if sub >= 0 {
                    removeAll(sub)
                    close(sub)
                    unlinkat(dirfd, n, AT_REMOVEDIR)
                } else {
                    unlinkat(dirfd, n, 0)
                }
            }
        }
        let fd = open(root, O_DIRECTORY | O_RDONLY)
        if fd >= 0 { removeAll(fd); close(fd) }
        rmdir(root)
    }

    private func walk(_ path: String) throws -> (visited: [String], failures: [WalkFailure]) {
        let st = try FileStat.of(path: path)
        var visited: [String] = [], failures: [WalkFailure] = []
        TreeWalker.walk(path, device: st.device, failed: { failures.append($0) }) { p, _ in visited.append(p) }
        return (visited, failures)
    }

    func testVisitsEveryFileInNameOrderWithoutFailures() throws {
        let (visited, failures) = try walk(root)
        XCTAssertEqual(visited, [root + "/three", root + "/a/one", root + "/a/b/two"])
        XCTAssertEqual(failures, [])
    }

    func testAMissingRootIsAFailure() throws {
        let st = try FileStat.of(path: root)
        var failures: [WalkFailure] = []
        TreeWalker.walk(root + "/nothing", device: st.device, failed: { failures.append($0) }) { _, _ in }
        XCTAssertEqual(failures.map(\.path), [root + "/nothing"])
        XCTAssertEqual(failures.first?.error.errno, ENOENT)
    }

    func testWhatLiesPastPathMaxIsReportedNotDropped() throws {
        // 17 directories of 250 bytes: the deepest ones' paths are longer than PATH_MAX.
        var fd = open(root, O_DIRECTORY | O_RDONLY)
        for i in 0..<17 {
            let name = String(format: "d%02d", i) + String(repeating: "x", count: 247)
            XCTAssertEqual(mkdirat(fd, name, 0o755), 0)
            let next = openat(fd, name, O_DIRECTORY | O_RDONLY)
            close(fd)
            fd = next
        }
        let file = openat(fd, "deep", O_CREAT | O_WRONLY, 0o644)
        close(file)
        close(fd)
        let (visited, failures) = try walk(root)
        XCTAssertEqual(visited.count, 3, "the shallow files are still visited")
        XCTAssertFalse(failures.isEmpty, "the walk said nothing of what it could not reach")
        XCTAssertTrue(failures.allSatisfy { $0.error.errno == ENAMETOOLONG }, "\(failures)")
    }
}
