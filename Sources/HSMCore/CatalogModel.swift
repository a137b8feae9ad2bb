/// What `hsmctl report` shows: the catalog's figures per managed filesystem and per store.
public struct CatalogReport: Codable, Sendable, Equatable {
    public struct Count: Codable, Sendable, Equatable {
        public var files: Int64
        public var bytes: Int64
        public init(files: Int64, bytes: Int64) { self.files = files; self.bytes = bytes }
    }

    public struct Filesystem: Codable, Sendable, Equatable {
        public var path: String
        public var store: String
        public var files: Int64 = 0
        public var bytes: Int64 = 0
        /// State name → files and bytes (apparent size); every state is present.
        public var states: [String: Count] = Dictionary(uniqueKeysWithValues: HSMState.allCases.map { ($0.rawValue, Count(files: 0, bytes: 0)) })
        /// Bytes whose data is on the filesystem (size less offline bytes).
        public var localBytes: Int64 = 0
        /// Bytes only in the store (released blocks).
        public var offlineBytes: Int64 = 0
        /// Pinned files (`hsmctl pin`) and their apparent size: space release and the
        /// watermarks cannot free.
        public var pinned = Count(files: 0, bytes: 0)
        /// Objects archived from this filesystem and the bytes they hold in the store.
        public var objects: Int64 = 0
        public var storedBytes: Int64 = 0
        /// Unix seconds of the oldest and newest archive (nil: none).
        public var oldestArchive: Int64?
        public var newestArchive: Int64?

        public init(path: String, store: String) { self.path = path; self.store = store }
    }

    public struct Store: Codable, Sendable, Equatable {
        public var name: String
        public var objects: Int64 = 0
        public var storedBytes: Int64 = 0
        /// Objects no file row refers to.
        public var orphans: Int64 = 0
        public var orphanBytes: Int64 = 0
        public var oldestArchive: Int64?
        public var newestArchive: Int64?
        public init(name: String) { self.name = name }
    }

    public var filesystems: [Filesystem] = []
    public var stores: [Store] = []
    /// When the catalog was last rebuilt from markers and stores (Unix seconds).
    public var rebuiltAt: Int64?
    /// Said when the figures may be behind (a rebuild under way, updates dropped).
    public var notes: [String] = []

    public init() {}
}

/// What `hsmctl check` found.
public struct CheckReport: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// A marker names an object the store does not have.
        case missingObject = "missing_object"
        /// A marker cannot be decoded.
        case damagedMarker = "damaged_marker"
        /// An object no marker refers to.
        case orphan
        /// A stored block fails its checksum, or cannot be read (scrub).
        case corruptObject = "corrupt_object"
        /// The catalog says something the markers or the store do not.
        case staleCatalog = "stale_catalog"
        /// A directory or file the walk could not read: the check is incomplete below it.
        case unreadable
    }

    public struct Discrepancy: Codable, Sendable, Equatable {
        public var kind: Kind
        public var path: String?
        public var object: String?
        public var store: String?
        /// What it means and what to do.
        public var meaning: String
        public init(kind: Kind, path: String? = nil, object: String? = nil, store: String? = nil, meaning: String) {
            self.kind = kind; self.path = path; self.object = object; self.store = store; self.meaning = meaning
        }
    }

    public var filesystems: [String] = []
    public var filesWalked: Int64 = 0
    public var markers: Int64 = 0
    public var objectsListed: Int64 = 0
    public var catalogRows: Int64 = 0
    public var scrubbedObjects: Int64 = 0
    public var scrubbedBytes: Int64 = 0
    public var repaired: Bool = false
    public var discrepancies: [Discrepancy] = []
    /// Set when the check could not be made (a store unreachable, the catalog unwritable).
    public var failure: String?

    public init() {}
}
