import XCTest
@testable import HSMCore

final class ConfigTests: XCTestCase {
    private let storeA = """
        [[store]]
        name = "a"
        type = "posix"
        path = "/srv/a"
        """

    /// The message parse gives for `text`, or nil if it parsed.
    private func error(_ text: String) -> String? {
        do {
            _ = try Config.parse(text)
            return nil
        } catch {
            return error.message
        }
    }

    private func assertRefused(_ text: String, naming keys: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard let message = error(text) else {
            return XCTFail("config was accepted:\n\(text)", file: file, line: line)
        }
        for key in keys {
            XCTAssertTrue(message.contains(key), "message \"\(message)\" does not name \(key)", file: file, line: line)
        }
    }

    func testFullValidConfig() throws {
        let c = try Config.parse("""
            # hsmd test configuration
            socket = "/run/hsmd/test.sock"
            state_dir = "/var/lib/hsmd-test/"
            log_level = "debug"
            recall_threads = 8
            recall_timeout = "5m"
            readahead_max = "128M"

            [[store]]
            name = "tier2"
            type = "posix"
            path = "/srv/tier2"

            [[store]]
            name = "cold"
            type = "posix"
            path = "/srv//cold/"

            [[filesystem]]
            path = "/data"
            store = "tier2"

            [[filesystem]]
            path = "/home/"
            store = "cold"
            """)
        XCTAssertEqual(c.socket, "/run/hsmd/test.sock")
        XCTAssertEqual(c.stateDir, "/var/lib/hsmd-test")
        XCTAssertEqual(c.logLevel, "debug")
        XCTAssertEqual(c.recallThreads, 8)
        XCTAssertEqual(c.recallTimeoutSeconds, 300)
        XCTAssertEqual(c.readaheadMaxBytes, 128 << 20)
        XCTAssertEqual(c.stores, [
            Config.Store(name: "tier2", type: "posix", path: "/srv/tier2"),
            Config.Store(name: "cold", type: "posix", path: "/srv/cold"),
        ])
        XCTAssertEqual(c.filesystems, [
            Config.Filesystem(path: "/data", store: "tier2"),
            Config.Filesystem(path: "/home", store: "cold"),
        ])
        XCTAssertEqual(c.store(named: "cold")?.path, "/srv/cold")
        XCTAssertNil(c.store(named: "nope"))
    }

    func testEmptyConfigGivesDefaults() throws {
        let c = try Config.parse("")
        XCTAssertEqual(c, Config())
        XCTAssertEqual(c.socket, "/run/hsmd/hsmd.sock")
        XCTAssertEqual(c.stateDir, "/var/lib/hsmd")
        XCTAssertEqual(c.logLevel, "info")
        XCTAssertEqual(c.recallThreads, 4)
        XCTAssertEqual(c.recallTimeoutSeconds, 120)
        XCTAssertEqual(c.readaheadMaxBytes, 64 << 20)
        XCTAssertTrue(c.stores.isEmpty)
        XCTAssertTrue(c.filesystems.isEmpty)
    }

    func testRecallTimeoutAcceptsInteger() throws {
        XCTAssertEqual(try Config.parse("recall_timeout = 30").recallTimeoutSeconds, 30)
        XCTAssertEqual(try Config.parse("recall_timeout = \"2h\"").recallTimeoutSeconds, 7200)
    }

    func testEveryLogLevelAccepted() throws {
        for l in Config.logLevels {
            XCTAssertEqual(try Config.parse("log_level = \"\(l)\"").logLevel, l)
        }
    }

    func testStorePathBesideFilesystemIsFine() throws {
        // "/data2" shares a prefix with "/data" but does not lie inside it.
        let c = try Config.parse("""
            [[store]]
            name = "a"
            type = "posix"
            path = "/data2/tier"
            [[filesystem]]
            path = "/data"
            store = "a"
            """)
        XCTAssertEqual(c.stores.first?.path, "/data2/tier")
    }

    func testUnknownTopLevelKey() {
        assertRefused("sockett = \"/run/x.sock\"", naming: ["sockett"])
    }

    func testUnknownKeyInStore() {
        assertRefused(storeA + "\ncolour = \"red\"", naming: ["store[0].colour"])
    }

    func testUnknownKeyInSecondStoreNamesItsIndex() {
        assertRefused(storeA + """

            [[store]]
            name = "b"
            type = "posix"
            pth = "/srv/b"
            """, naming: ["store[1].pth"])
    }

    func testUnknownKeyInFilesystem() {
        assertRefused(storeA + """

            [[filesystem]]
            path = "/data"
            store = "a"
            mount = "/x"
            """, naming: ["filesystem[0].mount"])
    }

    func testWrongTypes() {
        assertRefused("socket = 5", naming: ["socket"])
        assertRefused("state_dir = true", naming: ["state_dir"])
        assertRefused("log_level = 3", naming: ["log_level"])
        assertRefused("recall_threads = \"4\"", naming: ["recall_threads"])
        assertRefused("recall_timeout = true", naming: ["recall_timeout"])
        assertRefused("readahead_max = 67108864", naming: ["readahead_max"])
        assertRefused("store = \"a\"", naming: ["store"])
        assertRefused("filesystem = 1", naming: ["filesystem"])
        assertRefused("""
            [[store]]
            name = 1
            type = "posix"
            path = "/srv/a"
            """, naming: ["store[0].name"])
    }

    func testRelativePaths() {
        assertRefused("socket = \"run/hsmd.sock\"", naming: ["socket"])
        assertRefused("state_dir = \"var/lib/hsmd\"", naming: ["state_dir"])
        assertRefused("""
            [[store]]
            name = "a"
            type = "posix"
            path = "srv/a"
            """, naming: ["store[0].path"])
        assertRefused(storeA + """

            [[filesystem]]
            path = "data"
            store = "a"
            """, naming: ["filesystem[0].path"])
    }

    func testLogLevelNotInList() {
        assertRefused("log_level = \"verbose\"", naming: ["log_level", "verbose"])
        assertRefused("log_level = \"INFO\"", naming: ["log_level"])
    }

    func testRecallThreadsRange() throws {
        assertRefused("recall_threads = 0", naming: ["recall_threads"])
        assertRefused("recall_threads = -1", naming: ["recall_threads"])
        assertRefused("recall_threads = 257", naming: ["recall_threads"])
        XCTAssertEqual(try Config.parse("recall_threads = 1").recallThreads, 1)
        XCTAssertEqual(try Config.parse("recall_threads = 256").recallThreads, 256)
    }

    func testPremarkFiles() throws {
        XCTAssertEqual(try Config.parse("").premarkFiles, 200_000)
        XCTAssertEqual(try Config.parse("premark_files = 0").premarkFiles, 0)
        XCTAssertEqual(try Config.parse("premark_files = 5000000").premarkFiles, 5_000_000)
        assertRefused("premark_files = -1", naming: ["premark_files", "-1"])
        assertRefused("premark_files = \"all\"", naming: ["premark_files", "integer"])
    }

    func testBadDurationsAndSizes() {
        assertRefused("recall_timeout = \"0s\"", naming: ["recall_timeout"])
        assertRefused("recall_timeout = 0", naming: ["recall_timeout"])
        assertRefused("recall_timeout = \"soon\"", naming: ["recall_timeout"])
        assertRefused("readahead_max = \"512k\"", naming: ["readahead_max"])
        assertRefused("readahead_max = \"lots\"", naming: ["readahead_max"])
    }

    /// hsmd turns recall_timeout into nanoseconds in a UInt64; a value that cannot be
    /// represented must be refused here, naming the key, not trap the daemon at start-up.
    func testAbsurdRecallTimeoutRefused() {
        assertRefused("recall_timeout = \"1000000w\"", naming: ["recall_timeout"])
        assertRefused("recall_timeout = 9223372036854775807", naming: ["recall_timeout"])
    }

    func testUnsupportedStoreType() {
        assertRefused("""
            [[store]]
            name = "a"
            type = "tape"
            path = "/srv/a"
            """, naming: ["store[0].type", "tape", "s3"])
    }

    private func s3Store(_ lines: String) -> String {
        "[[store]]\nname = \"cold\"\ntype = \"s3\"\n" + lines
    }

    func testS3Store() throws {
        let c = try Config.parse(s3Store("""
            endpoint = "http://127.0.0.1:7480"
            bucket = "hsm-tier.2"
            region = "eu-west-3"
            prefix = "site/a/"
            access_key_id = "AKIDEXAMPLE"
            secret_access_key = "TopSecretValue123"
            part_size = "64M"
            connections = 16
            timeout = "2m"
            """))
        var expected = S3Settings(endpoint: "http://127.0.0.1:7480", bucket: "hsm-tier.2")
        expected.region = "eu-west-3"
        expected.prefix = "site/a/"
        expected.accessKeyID = "AKIDEXAMPLE"
        expected.secretAccessKey = Secret("TopSecretValue123")
        expected.partSize = 64 << 20
        expected.connections = 16
        expected.timeoutSeconds = 120
        XCTAssertEqual(c.stores, [Config.Store(name: "cold", type: "s3", path: "", s3: expected)])
        // The defaults.
        let d = try XCTUnwrap(try Config.parse(s3Store("endpoint = \"http://s3.local\"\nbucket = \"b01\"")).stores.first?.s3)
        XCTAssertEqual([d.region, d.prefix], ["us-east-1", ""])
        XCTAssertEqual(d.partSize, 16 << 20)
        XCTAssertNil(d.accessKeyID)
        // The secret is in no printed form of the config.
        for text in ["\(c)", String(reflecting: c), "\(c.stores)"] {
            XCTAssertFalse(text.contains("TopSecretValue123"), text)
        }
    }

    func testHTTPSEndpointAndCAFile() throws {
        let c = try Config.parse(s3Store("endpoint = \"https://s3.example.com:8443\"\nbucket = \"b01\"\ntls_ca_file = \"/etc/hsmd/ca.pem\""))
        let s = try XCTUnwrap(c.stores.first?.s3)
        XCTAssertEqual(s.endpoint, "https://s3.example.com:8443")
        XCTAssertEqual(s.tlsCAFile, "/etc/hsmd/ca.pem")
        // Without tls_ca_file: the system's CA certificates.
        let d = try XCTUnwrap(try Config.parse(s3Store("endpoint = \"https://s3.example.com\"\nbucket = \"b01\"")).stores.first?.s3)
        XCTAssertNil(d.tlsCAFile)
    }

    func testBadS3StoreRefused() {
        let base = "endpoint = \"http://127.0.0.1:7480\"\nbucket = \"b01\"\n"
        assertRefused(s3Store("bucket = \"b01\""), naming: ["store[0].endpoint", "required"])
        assertRefused(s3Store("endpoint = \"http://h\""), naming: ["store[0].bucket", "required"])
        assertRefused(s3Store("endpoint = \"https://\"\nbucket = \"b01\""), naming: ["store[0].endpoint", "https://"])
        assertRefused(s3Store("endpoint = \"ftp://h\"\nbucket = \"b01\""), naming: ["store[0].endpoint", "ftp://h"])
        assertRefused(s3Store("endpoint = \"127.0.0.1:7480\"\nbucket = \"b01\""), naming: ["store[0].endpoint"])
        assertRefused(s3Store(base + "path = \"/srv/x\""), naming: ["store[0].path", "s3"])
        assertRefused(s3Store("endpoint = \"http://h\"\nbucket = \"Bad_Bucket\""), naming: ["store[0].bucket", "Bad_Bucket"])
        assertRefused(s3Store(base + "part_size = \"4M\""), naming: ["store[0].part_size", "5M"])
        assertRefused(s3Store(base + "part_size = \"6G\""), naming: ["store[0].part_size"])
        assertRefused(s3Store(base + "connections = 0"), naming: ["store[0].connections"])
        assertRefused(s3Store(base + "timeout = 0"), naming: ["store[0].timeout"])
        assertRefused(s3Store(base + "prefix = \"/abs/\""), naming: ["store[0].prefix"])
        assertRefused(s3Store(base + "prefix = \"noslash\""), naming: ["store[0].prefix"])
        assertRefused(s3Store(base + "tls_ca_file = \"/etc/ca.pem\""), naming: ["store[0].tls_ca_file", "https", "http://127.0.0.1:7480"])
        assertRefused(s3Store("endpoint = \"https://h\"\nbucket = \"b01\"\ntls_ca_file = \"ca.pem\""), naming: ["store[0].tls_ca_file"])
        assertRefused(s3Store("endpoint = \"https://h\"\nbucket = \"b01\"\ntls_ca_file = 3"), naming: ["store[0].tls_ca_file"])
        assertRefused(s3Store(base + "access_key_id = \"AK\""), naming: ["access_key_id", "secret_access_key"])
        assertRefused(s3Store(base + "access_key_id = \"AK\"\nsecret_access_key = \"S\"\ncredentials_file = \"/etc/c\""),
                      naming: ["credentials_file"])
        assertRefused(s3Store(base + "colour = \"red\""), naming: ["store[0].colour"])
        assertRefused("[[store]]\nname = \"p\"\ntype = \"posix\"\npath = \"/srv/p\"\nbucket = \"b01\"", naming: ["store[0].bucket", "posix"])
    }

    func testMissingRequiredStoreAndFilesystemKeys() {
        assertRefused("[[store]]\ntype = \"posix\"\npath = \"/srv/a\"", naming: ["store[0].name"])
        assertRefused("[[store]]\nname = \"\"\ntype = \"posix\"\npath = \"/srv/a\"", naming: ["store[0].name"])
        assertRefused("[[store]]\nname = \"a\"\npath = \"/srv/a\"", naming: ["store[0].type"])
        assertRefused("[[store]]\nname = \"a\"\ntype = \"posix\"", naming: ["store[0].path"])
        assertRefused(storeA + "\n[[filesystem]]\nstore = \"a\"", naming: ["filesystem[0].path"])
        assertRefused(storeA + "\n[[filesystem]]\npath = \"/data\"", naming: ["filesystem[0].store"])
    }

    func testFilesystemReferringToUndefinedStore() {
        assertRefused(storeA + """

            [[filesystem]]
            path = "/data"
            store = "a"

            [[filesystem]]
            path = "/home"
            store = "tier9"
            """, naming: ["filesystem[1].store", "tier9"])
        assertRefused("""
            [[filesystem]]
            path = "/data"
            store = "a"
            """, naming: ["filesystem[0].store"])
    }

    func testDuplicateStoreNames() {
        assertRefused(storeA + """

            [[store]]
            name = "a"
            type = "posix"
            path = "/srv/b"
            """, naming: ["store", "\"a\""])
    }

    func testDuplicateFilesystemPaths() {
        assertRefused(storeA + """

            [[filesystem]]
            path = "/data"
            store = "a"

            [[filesystem]]
            path = "/data/"
            store = "a"
            """, naming: ["filesystem[1].path"])
    }

    func testStorePathInsideManagedFilesystem() {
        for storePath in ["/data/tier", "/data", "/data/"] {
            assertRefused("""
                [[store]]
                name = "a"
                type = "posix"
                path = "\(storePath)"
                [[filesystem]]
                path = "/data"
                store = "a"
                """, naming: ["store[0].path", "/data"])
        }
        // Managing "/" means every store path is inside it.
        assertRefused(storeA + "\n[[filesystem]]\npath = \"/\"\nstore = \"a\"", naming: ["store[0].path"])
    }

    func testTOMLSyntaxErrorMentionsLine() {
        let text = """
            socket = "/run/hsmd.sock"
            log_level = "info"
            recall_threads = = 4
            """
        guard let message = error(text) else { return XCTFail("accepted bad TOML") }
        XCTAssertTrue(message.lowercased().contains("line 3"), message)
        let unterminated = "log_level = \"info\n"
        guard let m2 = error(unterminated) else { return XCTFail("accepted bad TOML") }
        XCTAssertTrue(m2.contains("line"), m2)
    }

    func testErrorDescriptionIsTheMessage() {
        do {
            _ = try Config.parse("bogus = 1")
            XCTFail("accepted")
        } catch {
            XCTAssertEqual("\(error)", error.message)
        }
    }
}
