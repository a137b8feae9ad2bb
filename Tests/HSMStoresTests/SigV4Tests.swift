import HSMKernel
import XCTest
@testable import HSMStores

/// AWS Signature V4 against the published vectors: the generic SigV4 test suite
/// (get-vanilla and friends, service "service") and the S3 examples of the S3 API
/// reference (GET with Range, PUT with a body, ListObjects), plus the hashes they rest on.
final class SigV4Tests: XCTestCase {
    private let suite = SigV4Signer(credentials: S3Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                                    region: "us-east-1", service: "service")
    private let s3 = SigV4Signer(credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                                 region: "us-east-1")

    func testSHA256AndHMACKnownAnswers() {
        XCTAssertEqual(hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // A million 'a's fed in uneven pieces: the buffering across updates.
        var h = SHA256()
        let a = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        var i = 0, step = 1
        while i < a.count { let n = min(step, a.count - i); h.update(Array(a[i..<(i + n)])); i += n; step = step % 997 + 13 }
        XCTAssertEqual(hex(h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // RFC 4231 test cases 2 and 6 (a key longer than the block).
        XCTAssertEqual(hex(SHA256.hmac(key: Array("Jefe".utf8), Array("what do ya want for nothing?".utf8))),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        XCTAssertEqual(hex(SHA256.hmac(key: [UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        XCTAssertEqual(hex(SHA256.hash(Array("Welcome to Amazon S3.".utf8))), "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
    }

    func testGetVanilla() {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
        let (canonical, signed) = SigV4Signer.canonicalRequest(method: "GET", path: "/", query: [], headers: headers,
                                                               payloadHash: SigV4Signer.emptyPayloadHash)
        XCTAssertEqual(canonical, "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(signed, "host;x-amz-date")
        XCTAssertEqual(suite.authorization(method: "GET", path: "/", query: [], headers: headers, payloadHash: SigV4Signer.emptyPayloadHash,
                                           amzDate: "20150830T123600Z"),
                       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    func testPostVanilla() {
        let auth = suite.authorization(method: "POST", path: "/", query: [], headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
                                       payloadHash: SigV4Signer.emptyPayloadHash, amzDate: "20150830T123600Z")
        XCTAssertTrue(auth.hasSuffix("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"), auth)
    }

    func testGetVanillaQueryOrderKeyCase() {
        let auth = suite.authorization(method: "GET", path: "/", query: [("Param2", "value2"), ("Param1", "value1")],
                                       headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
                                       payloadHash: SigV4Signer.emptyPayloadHash, amzDate: "20150830T123600Z")
        XCTAssertTrue(auth.hasSuffix("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"), auth)
    }

    func testS3GetObjectWithRange() {
        let auth = s3.authorization(method: "GET", path: "/test.txt", query: [],
                                    headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
                                              ("x-amz-content-sha256", SigV4Signer.emptyPayloadHash), ("x-amz-date", "20130524T000000Z")],
                                    payloadHash: SigV4Signer.emptyPayloadHash, amzDate: "20130524T000000Z")
        XCTAssertEqual(auth, "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    func testS3PutObject() {
        let payload = hex(SHA256.hash(Array("Welcome to Amazon S3.".utf8)))
        let auth = s3.authorization(method: "PUT", path: "/" + SigV4Signer.uriEncode("test$file.text", keepSlash: true), query: [],
                                    headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                                              ("x-amz-date", "20130524T000000Z"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                                              ("x-amz-content-sha256", payload)],
                                    payloadHash: payload, amzDate: "20130524T000000Z")
        XCTAssertTrue(auth.contains("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"), auth)
        XCTAssertTrue(auth.hasSuffix("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"), auth)
    }

    func testS3ListObjects() {
        let auth = s3.authorization(method: "GET", path: "/", query: [("max-keys", "2"), ("prefix", "J")],
                                    headers: [("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
                                              ("x-amz-content-sha256", SigV4Signer.emptyPayloadHash)],
                                    payloadHash: SigV4Signer.emptyPayloadHash, amzDate: "20130524T000000Z")
        XCTAssertTrue(auth.hasSuffix("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"), auth)
    }

    func testHeaderValuesAreTrimmedAndFolded() {
        let (c, _) = SigV4Signer.canonicalRequest(method: "GET", path: "/", query: [], headers: [("My-Header1", "  a   b   c  "), ("Host", "h")],
                                                  payloadHash: "x")
        XCTAssertTrue(c.contains("\nmy-header1:a b c\n"), c)
    }

    func testURIEncoding() {
        XCTAssertEqual(SigV4Signer.uriEncode("a b/c~d_e-f.g+h=i&é", keepSlash: true), "a%20b/c~d_e-f.g%2Bh%3Di%26%C3%A9")
        XCTAssertEqual(SigV4Signer.uriEncode("a/b", keepSlash: false), "a%2Fb")
    }

    func testAmzDate() {
        XCTAssertEqual(SigV4Signer.amzDate(secondsSince1970: 1_369_353_600), "20130524T000000Z")
        XCTAssertEqual(SigV4Signer.amzDate(secondsSince1970: 1_440_938_160), "20150830T123600Z")
        XCTAssertEqual(SigV4Signer.amzDate(secondsSince1970: 951_782_399), "20000228T235959Z")
        XCTAssertEqual(SigV4Signer.amzDate(secondsSince1970: 951_868_800), "20000301T000000Z")
    }

    /// The secret appears in no description of the credentials, the signer or an error.
    func testSecretIsNeverPrinted() {
        let secret = "SECRETsecretSECRET0123456789"
        let c = S3Credentials(accessKeyID: "AKID", secretAccessKey: secret)
        let signer = SigV4Signer(credentials: c, region: "us-east-1")
        for text in ["\(c)", String(reflecting: c), "\(signer)", String(reflecting: signer), "\([c])"] {
            XCTAssertFalse(text.contains(secret), text)
        }
    }
}
