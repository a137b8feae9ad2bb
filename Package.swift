// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "hsmd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "hsmd", targets: ["hsmd"]),
        .executable(name: "hsmctl", targets: ["hsmctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // Kernel constants the system headers lack, and the syscalls that need _GNU_SOURCE.
        .target(name: "CHSMKernel"),
        // TLS for the s3 store's https endpoints, through the system's OpenSSL (libssl-dev),
        // called from tls.c only. Its own module, used by HSMStores only, so hsmctl (which
        // links CHSMKernel) does not link libssl. Linked here: a system library module's
        // `link` reaches only the Swift code that imports it, and no Swift code sees OpenSSL.
        .target(name: "CHSMTLS", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // The system's SQLite, for the change journal (small and quick to build).
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        // Thin Swift wrappers: file descriptors, fanotify, leases, xattrs, holes. All unsafe
        // pointer work lives here.
        .target(name: "HSMKernel", dependencies: ["CHSMKernel"]),
        // Value types and pure logic shared by hsmd and hsmctl: marker codec, block math,
        // config, control protocol, policy.
        .target(name: "HSMCore", dependencies: [
            "HSMKernel",
            .product(name: "TOMLKit", package: "TOMLKit"),
        ]),
        // The tiers: the ObjectStore protocol, the record format the stores share, the posix
        // store. Linked by hsmd only, so hsmctl carries no store or network code.
        .target(name: "HSMStores", dependencies: ["HSMCore", "HSMKernel", "CHSMTLS"]),
        // The daemon's machinery: event loop, recall engine, archive/release, control server.
        .target(name: "HSMDaemon", dependencies: [
            "HSMCore", "HSMStores", "HSMKernel", "CSQLite",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "hsmd", dependencies: [
            "HSMDaemon", "HSMCore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "hsmctl", dependencies: [
            "HSMCore", "HSMKernel",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Helpers the test targets share (seeded generator, forked isolation for fuzzing).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "HSMCoreTests", dependencies: ["HSMCore", "HSMKernel", "TestSupport"]),
        // The stores and their record format, against real files in a temporary folder.
        .testTarget(name: "HSMStoresTests", dependencies: ["HSMStores", "HSMCore", "HSMKernel", "TestSupport"]),
        // The daemon's machinery (recall engine, event ownership) against real files and a
        // store that fails on demand; needs root (trusted.* xattrs).
        .testTarget(name: "HSMDaemonTests", dependencies: ["HSMDaemon", "HSMStores", "HSMCore", "HSMKernel"]),
    ]
)
