import XCTest
import TestSupport
@testable import HSMStores

/// The S3 answers hsmd reads (error bodies, ListObjectsV2 pages, multipart initiate and
/// complete) as RGW and AWS send them, and garbage: a clear nil, never a trap.
final class S3ResponseTests: XCTestCase {
    func testErrorBody() {
        let xml = Array("""
        <?xml version="1.0" encoding="UTF-8"?>
        <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature &amp; &lt;more&gt; &#x41;&#66;</Message><RequestId>tx1</RequestId></Error>
        """.utf8)
        XCTAssertEqual(S3ErrorBody.parse(xml), S3ErrorBody(code: "SignatureDoesNotMatch", message: "The request signature & <more> AB"))
        XCTAssertNil(S3ErrorBody.parse(Array("<ListBucketResult></ListBucketResult>".utf8)))
        XCTAssertEqual(S3ErrorBody.parse(Array("<Error><Code>NoSuchKey</Code></Error>".utf8)), S3ErrorBody(code: "NoSuchKey", message: ""))
    }

    func testListPage() {
        let xml = Array("""
        <?xml version="1.0" encoding="UTF-8"?>
        <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>hsm/</Prefix><KeyCount>2</KeyCount>
        <MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok/+=</NextContinuationToken>
        <Contents><Key>hsm/00/00aa.json</Key><LastModified>2026-12-01T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>5</Size></Contents>
        <Contents><Key>hsm/00/00aa.data</Key><Size>7</Size><Owner><ID>t</ID></Owner></Contents>
        </ListBucketResult>
        """.utf8)
        XCTAssertEqual(S3ListPage.parse(xml), S3ListPage(keys: ["hsm/00/00aa.json", "hsm/00/00aa.data"], isTruncated: true, nextContinuationToken: "tok/+="))
        let last = Array("<ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>".utf8)
        XCTAssertEqual(S3ListPage.parse(last), S3ListPage(keys: [], isTruncated: false, nextContinuationToken: nil))
        // Truncated without a token would loop forever; a Contents without Key is no listing.
        XCTAssertNil(S3ListPage.parse(Array("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>".utf8)))
        XCTAssertNil(S3ListPage.parse(Array("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>".utf8)))
        XCTAssertNil(S3ListPage.parse(Array("<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>".utf8)))
    }

    func testMultipart() {
        let initiate = Array("""
        <?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\
        <Bucket>b</Bucket><Key>k</Key><UploadId>2~abc-DEF_1</UploadId></InitiateMultipartUploadResult>
        """.utf8)
        XCTAssertEqual(S3MultipartXML.uploadID(initiate), "2~abc-DEF_1")
        XCTAssertNil(S3MultipartXML.uploadID(Array("<InitiateMultipartUploadResult><UploadId></UploadId></InitiateMultipartUploadResult>".utf8)))
        // RGW 16.2 answers an empty ETag (the completion still counts).
        XCTAssertTrue(S3MultipartXML.completed(Array("<CompleteMultipartUploadResult><Location>l</Location><ETag></ETag></CompleteMultipartUploadResult>".utf8)))
        XCTAssertFalse(S3MultipartXML.completed(Array("<Error><Code>InternalError</Code></Error>".utf8)))
        XCTAssertFalse(S3MultipartXML.completed([]))
        let body = String(decoding: S3MultipartXML.completeRequest(etags: ["\"a1\"", "\"b2\""]), as: UTF8.self)
        XCTAssertEqual(body, "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;a1&quot;</ETag></Part><Part><PartNumber>2</PartNumber><ETag>&quot;b2&quot;</ETag></Part></CompleteMultipartUpload>")
    }

    func testListMultipartUploads() throws {
        let page = Array("""
        <ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated><NextKeyMarker>k2</NextKeyMarker>        <NextUploadIdMarker>u2</NextUploadIdMarker><Upload><Key>k1</Key><UploadId>u1</UploadId></Upload>        <Upload><Key>k2</Key><UploadId>u2</UploadId><Initiated>x</Initiated></Upload></ListMultipartUploadsResult>
        """.utf8)
        let parsed = try XCTUnwrap(S3MultipartXML.uploads(page))
        XCTAssertEqual(parsed.uploads.map { "\($0.0) \($0.1)" }, ["k1 u1", "k2 u2"])
        XCTAssertEqual(parsed.next.map { "\($0.0) \($0.1)" }, "k2 u2")
        let last = try XCTUnwrap(S3MultipartXML.uploads(Array("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>".utf8)))
        XCTAssertTrue(last.uploads.isEmpty)
        XCTAssertNil(last.next)
        XCTAssertNil(S3MultipartXML.uploads(Array("<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>".utf8)))
        XCTAssertNil(S3MultipartXML.uploads(Array("<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>".utf8)))
    }

    func testMalformedXMLIsRefused() {
        for bad in ["", "<", "<a>", "<a></b>", "<a><b></a></b>", "text<a/>", "<a/><b/>", "<a>&bogus;</a>", "<a>&#xZZ;</a>", "<a>&#1114112;</a>",
                    "<a>&amp</a>", "<!-- never closed", "<?xml", "<></>", "<a><![CDATA[x</a>",
                    String(repeating: "<a>", count: 100) + String(repeating: "</a>", count: 100)] {
            XCTAssertNil(XMLNode.parse(Array(bad.utf8)), bad)
        }
        XCTAssertEqual(XMLNode.parse(Array("<a><![CDATA[<x>]]></a>".utf8))?.text, "<x>")
    }

    /// Random bytes and random cuts and flips of real answers: every parser returns, in a
    /// child process so a trap fails this test instead of ending the run.
    func testGarbageNeverTraps() {
        let samples = [
            "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t</NextContinuationToken><Contents><Key>k&amp;</Key></Contents></ListBucketResult>",
            "<Error><Code>SlowDown</Code><Message>m &#233;</Message></Error>",
            "<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>",
        ].map { Array($0.utf8) }
        let outcome = runIsolated { crumb in
            var g = SeededGenerator(seed: 12)
            for round in 0..<20_000 {
                var b: [UInt8]
                if round % 4 == 0 {
                    b = (0..<Int.random(in: 0...64, using: &g)).map { _ in
                        Array("<>/&;#x![]CDATA-?ab \"".utf8).randomElement(using: &g) ?? 0
                    }
                } else {
                    b = samples[round % samples.count]
                    for _ in 0..<Int.random(in: 1...4, using: &g) where !b.isEmpty {
                        let i = Int.random(in: 0..<b.count, using: &g)
                        switch Int.random(in: 0..<3, using: &g) {
                        case 0: b[i] = UInt8.random(in: 0...255, using: &g)
                        case 1: b = Array(b[..<i])
                        default: b.remove(at: i)
                        }
                    }
                }
                crumb.record(b)
                _ = S3ErrorBody.parse(b)
                _ = S3ListPage.parse(b)
                _ = S3MultipartXML.uploadID(b)
                _ = S3MultipartXML.completed(b)
                _ = S3MultipartXML.uploads(b)
                _ = try? HTTPConnection.parseHead(b[...])
            }
            return nil
        }
        assertIsolatedPasses(outcome, "S3 response parsers on garbage")
    }

    func testResponseHead() throws {
        let (status, headers, keepAlive) = try HTTPConnection.parseHead(Array("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nETag:  \"x\"  \r\nConnection: keep-alive".utf8)[...])
        XCTAssertEqual(status, 206)
        XCTAssertEqual(headers.first { $0.0 == "ETag" }?.1, "\"x\"")
        XCTAssertTrue(keepAlive)
        XCTAssertFalse(try HTTPConnection.parseHead(Array("HTTP/1.1 200 OK\r\nconnection: Close".utf8)[...]).2)
        XCTAssertFalse(try HTTPConnection.parseHead(Array("HTTP/1.0 200 OK".utf8)[...]).2)
        for bad in ["", "HTTP/2 200", "SSH-2.0-OpenSSH", "HTTP/1.1 abc", "HTTP/1.1 999 x", "HTTP/1.1 200 OK\r\nno colon here"] {
            XCTAssertThrowsError(try HTTPConnection.parseHead(Array(bad.utf8)[...]), bad)
        }
    }

    func testEndpoint() {
        XCTAssertEqual(try S3Endpoint.parse("http://127.0.0.1:7480").get(), S3Endpoint(host: "127.0.0.1", port: 7480, secure: false))
        XCTAssertEqual(try S3Endpoint.parse("https://s3.amazonaws.com/").get(), S3Endpoint(host: "s3.amazonaws.com", port: 443, secure: true))
        XCTAssertEqual(try S3Endpoint.parse("http://[::1]:9000").get(), S3Endpoint(host: "::1", port: 9000, secure: false))
        for bad in ["127.0.0.1:7480", "ftp://x", "http://", "http://h:0", "http://h:99999", "http://h:x", "http://h/bucket", "http://user@h"] {
            XCTAssertThrowsError(try S3Endpoint.parse(bad).get(), bad)
        }
    }
}
