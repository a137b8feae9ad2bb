/// `full_recall_programs`: which programs get a released file's whole data back before their
/// `open` returns. Programs are named as the kernel shows them (`/proc/PID/comm`: at most 15
/// bytes, so `qemu-system-x86_64` is `qemu-system-x86`); a name ending in `*` matches every
/// program whose name starts with what comes before it.
public struct FullRecallPrograms: Equatable, Sendable {
    /// Why each is here (README, Configuration): cp, mv, tar, bsdtar, cpio and install look
    /// for holes with lseek(SEEK_DATA), which raises no event, or (tar) compare ctime, which a
    /// recall changes; losetup and mount (for `-o loop`) open an image for a loop device,
    /// whose reads go through the block layer and raise no event at all; qemu-img, qemu-nbd
    /// and qemu itself map an image's holes with SEEK_DATA before reading.
    public static let defaults = ["cp", "mv", "tar", "bsdtar", "cpio", "install",
                                  "losetup", "mount", "qemu-img", "qemu-nbd", "qemu-system-*", "qemu-kvm"]

    /// Archivers read each file once and close it; GNU tar also fails a file whose ctime
    /// changed while it read it, and the marker write after a recall changes it. Their
    /// files' markers wait until no other process has the file open (RecallSettle in
    /// hsmd). Long holders (a loop device, qemu) get theirs at once, as any recall does.
    public static let archivers: Set<String> = ["tar", "gtar", "bsdtar", "cpio"]

    /// Does the marker of a file `program` had recalled whole at its open wait until the
    /// file is closed everywhere?
    public static func markerWaitsForClose(_ program: String) -> Bool { archivers.contains(program) }

    /// The kernel keeps this many bytes of a program's name.
    public static let commLength = 15

    public let patterns: [String]
    private let exact: Set<String>
    private let prefixes: [String]

    /// `patterns` as validated by `problem(with:)`; one that is not valid matches nothing.
    public init(_ patterns: [String]) {
        self.patterns = patterns
        var exact = Set<String>()
        var prefixes: [String] = []
        for p in patterns where Self.problem(with: p) == nil {
            if p.hasSuffix("*") { prefixes.append(String(p.dropLast())) } else { exact.insert(p) }
        }
        self.exact = exact
        self.prefixes = prefixes
    }

    /// Does `program` (a /proc/PID/comm name) get the whole file back when it opens one?
    public func includes(_ program: String) -> Bool {
        if program.isEmpty { return false }
        if exact.contains(program) { return true }
        return prefixes.contains { program.utf8.starts(with: $0.utf8) }
    }

    /// What is wrong with one entry, said so that the operator knows what to write instead;
    /// nil when it is fine.
    public static func problem(with pattern: String) -> String? {
        let stem = pattern.hasSuffix("*") ? String(pattern.dropLast()) : pattern
        if stem.isEmpty {
            return pattern.isEmpty ? "an empty name matches no program"
                : "\"*\" alone would recall every released file whole at every open; name the programs (a prefix such as \"qemu-*\" is allowed)"
        }
        if stem.contains("*") {
            return "\"\(pattern)\": '*' is allowed only once, at the end (a prefix pattern such as \"qemu-system-*\")"
        }
        if stem.contains("/") {
            return "\"\(pattern)\" contains '/': give the program's name as the kernel shows it (/proc/PID/comm, e.g. \"cp\"), not a path"
        }
        if stem.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            return "\"\(pattern.debugDescription.dropFirst().dropLast())\" contains a control character, which no program name the kernel shows has"
        }
        if stem.utf8.count > commLength {
            let cut = String(decoding: stem.utf8.prefix(commLength), as: UTF8.self)
            return "\"\(pattern)\" is longer than the \(commLength) bytes the kernel keeps of a program's name (/proc/PID/comm): write \"\(cut)\" (what the kernel shows) or a prefix pattern ending in '*'"
        }
        return nil
    }
}
