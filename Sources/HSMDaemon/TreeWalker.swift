import HSMKernel

/// Depth-first walk that stays on one filesystem and never follows symlinks.
enum TreeWalker {
    /// Calls `visit` for every entry below `root` (not `root` itself), in name order.
    /// Unreadable directories are reported through `visit`'s caller as skipped entries.
    static func walk(_ root: String, device: UInt64, onError: (String, SystemError) -> Void = { _, _ in },
                     _ visit: (String, FileStat) -> Void) {
        walkWhile(root, device: device, onError: onError) { p, st in visit(p, st); return true }
    }

    /// The same walk, ending early once `visit` returns false.
    static func walkWhile(_ root: String, device: UInt64, onError: (String, SystemError) -> Void = { _, _ in },
                          _ visit: (String, FileStat) -> Bool) {
        var stack = [root]
        while let dir = stack.popLast() {
            let names: [String]
            do { names = try Directory.entries(dir).sorted() } catch { onError(dir, error); continue }
            var subdirs: [String] = []
            for name in names {
                let p = dir == "/" ? "/" + name : dir + "/" + name
                guard let st = try? FileStat.of(path: p) else { continue }
                if st.fileType == .directory {
                    if st.device == device { subdirs.append(p) }
                    continue
                }
                if !visit(p, st) { return }
            }
            stack += subdirs.reversed()
        }
    }
}
