import HSMCore

/// An s3 store's identity: the object `<prefix>hsmd-store.json` in its bucket, compared
/// by its bytes (a bucket has no device or inode to pin). A bucket deleted and re-created
/// empty, or an endpoint that reaches another cluster with a bucket of the same name,
/// lacks it or holds another.
struct S3Identity: IdentityLocation {
    let client: S3Client
    let settings: S3Settings
    /// Each request's retry budget: doctor and the checks before archive and release
    /// answer within seconds when the service does not.
    let budgetMillis: Int

    var key: String { settings.prefix + StoreIdentity.fileName }
    var place: String {
        "bucket \(settings.bucket)\(settings.prefix.isEmpty ? "" : " (prefix \(settings.prefix))") at \(settings.endpoint)"
    }
    var kind: String { "bucket (endpoint, bucket and prefix)" }
    var identityNoun: String { "identity object" }
    var identityName: String { "the identity object \(key) in bucket \(settings.bucket) at \(settings.endpoint)" }
    var absentHint: String {
        "was the bucket emptied, or deleted and created again, does the endpoint reach another cluster than before, or have endpoint, bucket or prefix changed"
    }
    var wrongStoreRemedy: String { "point endpoint, bucket and prefix at the store hsmd archived to" }
    var goneHint: String {
        " (a bucket emptied or created again, or an endpoint that reaches another cluster, is another store: released files whose objects are not found read EIO; put the store back, identity object and all, or see README \"The store must be the store\")"
    }
    /// A service that did not answer at start gets its identity when it first does.
    var initialisesOnCheck: Bool { true }

    private var retry: RetryPolicy { RetryPolicy(budgetMillis: budgetMillis) }

    func placeMark() -> Result<PlaceMark?, PlaceProblem> { .success(nil) }

    func placeMoved(pinned: PlaceMark, now: PlaceMark) -> String { "" }

    func readIdentity() -> IdentityRead {
        do throws(S3Error) {
            return .present(try client.getObject(key, limit: 64 << 10, retry: retry))
        } catch {
            // A bucket that is not there is not an identity that is missing: the message
            // says so (explain), and a bucket created again would answer NoSuchKey.
            if case .status(404, let code, _, _, _) = error, code != "NoSuchBucket" { return .missing }
            return .unreadable(S3Store.explain(error, settings: settings, credentials: client.signer.credentials))
        }
    }

    func writeIdentity(_ bytes: [UInt8]) -> String? {
        do throws(S3Error) { try client.putObject(key, bytes: bytes, retry: retry) } catch {
            return "cannot write \(identityName): \(S3Store.explain(error, settings: settings, credentials: client.signer.credentials))"
        }
        return nil
    }

    /// Objects under `<prefix>objects/` and no identity: a store from before identity
    /// objects (adopted). Anything else under the prefix is left alone: hsmd writes only
    /// its own keys, so other things in a shared bucket do not make it another store.
    func firstUse() -> FirstUse {
        do throws(S3Error) {
            return try client.hasKeys(prefix: settings.prefix + "objects/", retry: retry) ? .preIdentity : .empty
        } catch {
            return .refused("cannot list \(settings.prefix)objects/: \(S3Store.explain(error, settings: settings, credentials: client.signer.credentials))")
        }
    }
}
