import XCTest
@testable import HSMCore

final class FullRecallProgramsTests: XCTestCase {
    func testExactNamesAndPrefixPatterns() {
        let r = FullRecallPrograms(["cp", "qemu-system-*", "qemu-img"])
        XCTAssertTrue(r.includes("cp"))
        XCTAssertFalse(r.includes("cpio"), "an exact name is not a prefix")
        XCTAssertFalse(r.includes("c"))
        XCTAssertTrue(r.includes("qemu-system-x86"), "the kernel's 15-byte cut of qemu-system-x86_64")
        XCTAssertTrue(r.includes("qemu-system-aar"))
        XCTAssertTrue(r.includes("qemu-system-"))
        XCTAssertFalse(r.includes("qemu-system"))
        XCTAssertTrue(r.includes("qemu-img"))
        XCTAssertFalse(r.includes("qemu-img2"))
        XCTAssertFalse(r.includes(""), "a process whose name could not be read")
        XCTAssertFalse(FullRecallPrograms([]).includes("cp"))
    }

    func testTheDefaultsCoverLoopDevicesAndQemu() {
        let r = FullRecallPrograms(FullRecallPrograms.defaults)
        for p in ["cp", "mv", "tar", "bsdtar", "cpio", "install", "losetup", "mount", "qemu-img", "qemu-nbd",
                  "qemu-system-x86", "qemu-system-aar", "qemu-kvm"] {
            XCTAssertTrue(r.includes(p), p)
        }
        for p in ["python3", "cat", "dd", "rsync", "umount", "mount.nfs"] { XCTAssertFalse(r.includes(p), p) }
        for p in FullRecallPrograms.defaults { XCTAssertNil(FullRecallPrograms.problem(with: p), p) }
        XCTAssertEqual(Config().fullRecallPrograms, FullRecallPrograms.defaults)
    }

    func testOnlyArchiversWaitForTheCloseBeforeTheMarker() {
        for p in ["tar", "gtar", "bsdtar", "cpio"] { XCTAssertTrue(FullRecallPrograms.markerWaitsForClose(p), p) }
        // A loop device or a virtual machine holds its image open for as long as it runs.
        for p in ["cp", "mv", "losetup", "mount", "qemu-img", "qemu-system-x86", "cat", ""] {
            XCTAssertFalse(FullRecallPrograms.markerWaitsForClose(p), p)
        }
    }

    func testBadPatternsAreRefusedWithAHint() {
        let cases: [(String, String)] = [
            ("", "empty"),
            ("*", "every released file"),
            ("qemu*img", "only once, at the end"),
            ("qemu-**", "only once, at the end"),
            ("/usr/bin/cp", "not a path"),
            ("cp\n", "control character"),
            ("qemu-system-x86_64", "write \"qemu-system-x86\""),
            ("qemu-system-x86_*", "longer than the 15 bytes"),
        ]
        for (pattern, hint) in cases {
            guard let problem = FullRecallPrograms.problem(with: pattern) else {
                XCTFail("\(pattern.debugDescription) was accepted"); continue
            }
            XCTAssertTrue(problem.contains(hint), "\(pattern.debugDescription): \(problem)")
            XCTAssertFalse(FullRecallPrograms([pattern]).includes(pattern), pattern)
        }
        // Exactly 15 bytes, with or without the '*' after them, is what the kernel can show.
        XCTAssertNil(FullRecallPrograms.problem(with: "qemu-system-x86"))
        XCTAssertNil(FullRecallPrograms.problem(with: "qemu-system-x86*"))
    }

    func testConfigNamesTheEntryAndTheProblem() {
        func message(_ line: String) -> String? {
            do { _ = try Config.parse(line); return nil } catch { return error.message }
        }
        XCTAssertEqual(try Config.parse(#"full_recall_programs = ["qemu-system-*", "cp"]"#).fullRecallPrograms,
                       ["qemu-system-*", "cp"])
        XCTAssertEqual(try Config.parse("full_recall_programs = []").fullRecallPrograms, [])
        let long = message(#"full_recall_programs = ["cp", "qemu-system-x86_64"]"#)
        XCTAssertTrue(long?.contains("full_recall_programs[1]") == true && long?.contains("qemu-system-x86\"") == true, long ?? "accepted")
        let star = message(#"full_recall_programs = ["*"]"#)
        XCTAssertTrue(star?.contains("full_recall_programs[0]") == true, star ?? "accepted")
        let number = message("full_recall_programs = [3]")
        XCTAssertTrue(number?.contains("full_recall_programs[0]: expected a program name as a string") == true, number ?? "accepted")
        let scalar = message(#"full_recall_programs = "cp""#)
        XCTAssertTrue(scalar?.contains("full_recall_programs: expected an array") == true, scalar ?? "accepted")
    }
}
