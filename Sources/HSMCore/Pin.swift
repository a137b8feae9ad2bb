/// `hsmctl pin`: a file whose data stays local. Present or absent, the `trusted.hsm.pin`
/// xattr is hsmd's own state about the file, like the marker: release refuses a pinned
/// file, and archive never copies the pin into the object's record (an import makes
/// released stubs, which a pin would contradict).
public enum Pin {
    public static let xattrName = "trusted.hsm.pin"
    public static let value: [UInt8] = Array("1".utf8)
    /// xattrs hsmd keeps for itself and never stores with a file's own.
    public static func isHSMState(_ name: String) -> Bool { name == Marker.xattrName || name == xattrName }
}
