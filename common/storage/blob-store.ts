/**
 * BlobStore: the narrow storage interface everything in Bulwark is built on.
 *
 * It is the shape of a versioned, Object-Locked S3 bucket and nothing more: put (with an optional
 * lock and always with a checksum), ranged get, head, list, list versions, delete one version or
 * add a delete marker, extend a version's retention, and read the bucket's own configuration and
 * clock. Behaviour that is not storage (retries, concurrency limits, fault injection) lives in
 * wrappers (wrappers.ts), stacked in one place (open-store.ts).
 *
 * Implementations: S3Store (s3-store.ts) for real buckets, MemoryStore (memory-store.ts), a fake
 * that enforces retention like a real bucket. test/conformance/blob-store-suite.ts holds both to
 * the same behaviour.
 *
 * Errors are BulwarkErrors (../errors.ts). The codes each method may throw:
 *   NOT_FOUND        get/head/delete/extend of a key or version that does not exist, or whose
 *                    current version is a delete marker (permanent)
 *   OBJECT_LOCKED    delete of a version whose retention has not passed; extendRetention that
 *                    would shorten the lock or turn COMPLIANCE into GOVERNANCE (permanent)
 *   INVALID_RETENTION a lock date in the past (permanent)
 *   BUCKET_NOT_LOCKED a put with a lock on a bucket without Object Lock (permanent)
 *   CHECKSUM_MISMATCH the server computed another digest than the one we sent (retryable once by
 *                    the caller if it re-reads the source; permanent for the store), or a range
 *                    starts past the end of the version (it is shorter than the object looked for)
 *   ACCESS_DENIED, NO_SUCH_BUCKET (permanent); THROTTLED, TRANSIENT (retryable)
 */

export type LockMode = 'COMPLIANCE' | 'GOVERNANCE';

/** An Object Lock retention: S3's ObjectLockMode + ObjectLockRetainUntilDate. */
export interface ObjectLock {
  mode: LockMode;
  /** Unix milliseconds. S3 keeps whole seconds; stores round up so a lock never ends early. */
  retainUntil: number;
}

export interface PutOptions {
  lock?: ObjectLock;
  signal?: AbortSignal;
  /**
   * SHA-256 of the body, hex, when the caller has it already (a pack's id is the SHA-256 of its
   * bytes); else the store computes it. The server verifies it: a body that does not match is refused.
   */
  sha256?: string;
}

export interface PutResult {
  versionId: string;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface GetOptions {
  versionId?: string;
  range?: ByteRange;
  signal?: AbortSignal;
}

export interface ObjectInfo {
  key: string;
  versionId: string;
  size: number;
  lastModified: number;
  lock?: ObjectLock;
  legalHold?: boolean;
}

export interface ListEntry {
  key: string;
  size: number;
  lastModified: number;
}

export interface VersionEntry {
  key: string;
  versionId: string;
  size: number;
  lastModified: number;
  isLatest: boolean;
  isDeleteMarker: boolean;
}

/**
 * How to read one object with a plain HTTP(S) GET, without the store's client: a presigned URL
 * (S3), good until `expiresAt`. Any byte range of the object can be asked for with a Range header.
 * For readers on other threads, which cannot share the store (the restore's write workers).
 */
export interface DirectRead {
  url: string;
  /** Epoch ms (local clock) after which the URL no longer works. */
  expiresAt: number;
  /** Give up on a request that has sent nothing for this long. */
  timeoutMs: number;
}

export interface BucketConfig {
  versioning: 'Enabled' | 'Suspended' | 'Disabled';
  objectLock: boolean;
  /** The bucket's default retention, if one is set (applies to puts without lock headers). */
  defaultRetention?: { mode: LockMode; days?: number; years?: number };
}

export interface BlobStore {
  /** Human-readable description for messages, e.g. `s3://bucket/prefix @ http://…`. */
  readonly description: string;

  /**
   * Write one new version. Always sends the body's SHA-256, which the server verifies (CHECKSUM_MISMATCH).
   * The store does not use `body` once the returned promise settles: the backup reuses pack buffers.
   */
  put(key: string, body: Uint8Array, opts?: PutOptions): Promise<PutResult>;
  /** Read the current version (or `versionId`), whole or a byte range. */
  get(key: string, opts?: GetOptions): Promise<Uint8Array>;
  /** Metadata of the current version (or `versionId`), including its lock. */
  head(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<ObjectInfo>;
  /** Current objects under a prefix, in key order. Keys hidden by a delete marker are absent. */
  list(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<ListEntry>;
  /** Every version and delete marker under a prefix: keys in order, newest version first. */
  listVersions(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<VersionEntry>;
  /**
   * With a versionId: remove that version for good (refused with OBJECT_LOCKED while locked).
   * Without: add a delete marker (always allowed; locked versions stay readable by id).
   */
  delete(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<void>;
  /** Move a version's retain-until later. Never shortens; the mode cannot be weakened. */
  extendRetention(key: string, versionId: string, lock: ObjectLock, opts?: { signal?: AbortSignal }): Promise<void>;
  /** The bucket's versioning and Object Lock configuration. */
  bucketConfig(opts?: { signal?: AbortSignal }): Promise<BucketConfig>;
  /** The server's clock (S3: the Date header), which is the clock that decides when locks end. */
  serverTime(opts?: { signal?: AbortSignal }): Promise<number>;
  /**
   * Optional: a URL that reads `key` (its current version, or `versionId`) with a plain GET, for
   * readers on other threads. Stores that have no such URL (MemoryStore) leave it out. Whatever is
   * read this way is unverified bytes, exactly like `get`.
   */
  readonly directRead?: (key: string, opts?: { versionId?: string }) => Promise<DirectRead>;
}

/** Is this lock still holding at `now` (server time)? */
export function isLocked(lock: ObjectLock | undefined, now: number): boolean {
  return lock !== undefined && lock.retainUntil > now;
}

/** S3 stores retain-until in whole seconds: round up so that a lock never ends before we asked. */
export function roundUpToSecond(ms: number): number {
  return Math.ceil(ms / 1000) * 1000;
}
