import Foundation
import Glibc
import HSMCore
import XCTest
@testable import HSMStores

/// Where the s3 store's keys come from, in order, and what is refused: a credentials file
/// others may read, a file without keys, no credentials at all. No message holds a secret.
final class S3CredentialsTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "/hsmd-creds-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func settings() -> S3Settings { S3Settings(endpoint: "http://127.0.0.1:1", bucket: "b01") }

    private func file(_ text: String, mode: mode_t) -> String {
        let p = dir + "/credentials"
        _ = FileManager.default.createFile(atPath: p, contents: Data(text.utf8))
        chmod(p, mode)
        return p
    }

    private func refusal(_ s: S3Settings, env: [String: String] = [:]) -> String? {
        do throws(StoreError) { _ = try S3Store.credentials(s, store: "cold", environment: env); return nil } catch { return "\(error)" }
    }

    func testOrderKeysThenFileThenEnvironment() throws {
        let env = ["AWS_ACCESS_KEY_ID": "ENVID", "AWS_SECRET_ACCESS_KEY": "ENVSECRET"]
        var s = settings()
        XCTAssertEqual(try S3Store.credentials(s, store: "cold", environment: env).accessKeyID, "ENVID")
        s.credentialsFile = file("[other]\naws_access_key_id = O\naws_secret_access_key = OS\n[default]\naws_access_key_id = FILEID\n aws_secret_access_key = FILESECRET \n", mode: 0o600)
        XCTAssertEqual(try S3Store.credentials(s, store: "cold", environment: env),
                       S3Credentials(accessKeyID: "FILEID", secretAccessKey: "FILESECRET"))
        s.credentialsFile = nil
        s.accessKeyID = "CFGID"
        s.secretAccessKey = Secret("CFGSECRET")
        XCTAssertEqual(try S3Store.credentials(s, store: "cold", environment: env).accessKeyID, "CFGID")
    }

    func testRefusals() {
        var s = settings()
        XCTAssertTrue(refusal(s)?.contains("no credentials") ?? false)
        s.credentialsFile = file("[default]\naws_access_key_id = ID\naws_secret_access_key = SECRETVALUE\n", mode: 0o644)
        let open = refusal(s) ?? ""
        XCTAssertTrue(open.contains("chmod 600") && open.contains("0644"), open)
        XCTAssertFalse(open.contains("SECRETVALUE"), open)
        s.credentialsFile = file("[default]\naws_access_key_id = ID\n", mode: 0o600)
        XCTAssertTrue(refusal(s)?.contains("no aws_access_key_id and aws_secret_access_key") ?? false)
        s.credentialsFile = dir + "/absent"
        XCTAssertTrue(refusal(s)?.contains("absent") ?? false)
    }

    func testEndpointErrorsAtConstruction() {
        var s = settings()
        s.endpoint = "http://h/path"
        do throws(StoreError) {
            _ = try S3Store(name: "cold", settings: s, credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"))
            XCTFail("accepted")
        } catch {
            XCTAssertTrue("\(error)".contains("has a path"), "\(error)")
        }
    }
}
