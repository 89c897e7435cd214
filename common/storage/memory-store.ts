/**
 * MemoryStore: an in-memory BlobStore that behaves like a versioned bucket with Object Lock, for
 * fast unit tests. It is a fake with real behaviour (after kopia's object_locking_map.go):
 *   - every put adds a version; a put without versionId never replaces one;
 *   - a plain delete adds a delete marker; locked versions stay readable by version id;
 *   - deleting a version is refused while its retain-until is in the future (OBJECT_LOCKED);
 *   - retention can be extended, never shortened, and COMPLIANCE cannot become GOVERNANCE;
 *   - lock dates in the past are refused; locks on a bucket without Object Lock are refused;
 *   - the bucket's default retention applies to puts without a lock.
 * Time comes from an injectable Clock, so a test can make locks expire without waiting.
 * The same conformance suite runs against it and against a real RGW.
 */
import { createHash, randomBytes } from 'node:crypto';
import { type Clock, systemClock } from '../clock.js';
import { BulwarkError, throwIfAborted } from '../errors.js';
import {
  type BlobStore,
  type BucketConfig,
  type GetOptions,
  type ListEntry,
  type ObjectInfo,
  type ObjectLock,
  type PutOptions,
  type PutResult,
  type VersionEntry,
  isLocked,
  roundUpToSecond,
} from './blob-store.js';

interface Version {
  versionId: string;
  data: Uint8Array | null; // null = delete marker
  lastModified: number;
  lock?: ObjectLock;
}

export interface MemoryStoreOptions {
  clock?: Clock;
  /** Object Lock enabled on the bucket (default true). Without it, versioning is off too. */
  objectLock?: boolean;
  defaultRetention?: { mode: 'COMPLIANCE' | 'GOVERNANCE'; days: number };
}

export class MemoryStore implements BlobStore {
  readonly description = 'memory://';
  private readonly objects = new Map<string, Version[]>(); // newest last
  private readonly clock: Clock;
  private readonly objectLock: boolean;
  private readonly defaultRetention: MemoryStoreOptions['defaultRetention'];
  private seq = 0;

  constructor(opts: MemoryStoreOptions = {}) {
    this.clock = opts.clock ?? systemClock;
    this.objectLock = opts.objectLock ?? true;
    this.defaultRetention = opts.defaultRetention;
  }

  async put(key: string, body: Uint8Array, opts: PutOptions = {}): Promise<PutResult> {
    throwIfAborted(opts.signal);
    // like S3's XAmzContentSHA256Mismatch: a body that does not match the SHA-256 sent with it is refused
    if (opts.sha256 !== undefined && createHash('sha256').update(body).digest('hex') !== opts.sha256) {
      throw new BulwarkError('CHECKSUM_MISMATCH', `put ${key}: the body does not match its SHA-256`);
    }
    const now = this.clock.now();
    let lock = opts.lock;
    if (lock) {
      if (!this.objectLock) throw new BulwarkError('BUCKET_NOT_LOCKED', 'the bucket does not have Object Lock enabled');
      if (lock.retainUntil <= now) throw new BulwarkError('INVALID_RETENTION', 'retain-until date must be in the future');
      lock = { mode: lock.mode, retainUntil: roundUpToSecond(lock.retainUntil) };
    } else if (this.defaultRetention) {
      lock = { mode: this.defaultRetention.mode, retainUntil: now + this.defaultRetention.days * 86_400_000 };
    }
    const version: Version = {
      versionId: this.objectLock ? this.newVersionId() : 'null',
      data: Uint8Array.from(body),
      lastModified: now,
      ...(lock ? { lock } : {}),
    };
    const versions = this.objects.get(key) ?? [];
    if (!this.objectLock) versions.length = 0; // unversioned: overwrite
    versions.push(version);
    this.objects.set(key, versions);
    return { versionId: version.versionId };
  }

  async get(key: string, opts: GetOptions = {}): Promise<Uint8Array> {
    throwIfAborted(opts.signal);
    const v = this.find(key, opts.versionId);
    const data = v.data!;
    if (!opts.range) return Uint8Array.from(data);
    const { offset, length } = opts.range;
    if (offset >= data.length) throw new BulwarkError('CHECKSUM_MISMATCH', `range starts at ${offset}, past the end of ${key} (${data.length} bytes)`);
    return Uint8Array.from(data.subarray(offset, offset + length));
  }

  async head(key: string, opts: { versionId?: string; signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    throwIfAborted(opts.signal);
    const v = this.find(key, opts.versionId);
    return {
      key,
      versionId: v.versionId,
      size: v.data!.length,
      lastModified: v.lastModified,
      ...(v.lock ? { lock: { ...v.lock } } : {}),
    };
  }

  async *list(prefix: string, opts: { signal?: AbortSignal } = {}): AsyncIterable<ListEntry> {
    for (const key of this.sortedKeys(prefix)) {
      throwIfAborted(opts.signal);
      const latest = this.objects.get(key)?.at(-1);
      if (!latest || latest.data === null) continue;
      yield { key, size: latest.data.length, lastModified: latest.lastModified };
    }
  }

  async *listVersions(prefix: string, opts: { signal?: AbortSignal } = {}): AsyncIterable<VersionEntry> {
    for (const key of this.sortedKeys(prefix)) {
      throwIfAborted(opts.signal);
      const versions = this.objects.get(key) ?? [];
      for (let i = versions.length - 1; i >= 0; i--) {
        const v = versions[i]!;
        yield {
          key,
          versionId: v.versionId,
          size: v.data?.length ?? 0,
          lastModified: v.lastModified,
          isLatest: i === versions.length - 1,
          isDeleteMarker: v.data === null,
        };
      }
    }
  }

  async delete(key: string, opts: { versionId?: string; signal?: AbortSignal } = {}): Promise<void> {
    throwIfAborted(opts.signal);
    const versions = this.objects.get(key) ?? [];
    if (opts.versionId === undefined) {
      if (!this.objectLock) {
        this.objects.delete(key);
        return;
      }
      versions.push({ versionId: this.newVersionId(), data: null, lastModified: this.clock.now() });
      this.objects.set(key, versions);
      return;
    }
    const i = versions.findIndex((v) => v.versionId === opts.versionId);
    if (i < 0) return; // S3: deleting a version that does not exist succeeds
    const v = versions[i]!;
    if (isLocked(v.lock, this.clock.now())) {
      throw new BulwarkError('OBJECT_LOCKED', `${key} (version ${v.versionId}) is retained until ${new Date(v.lock!.retainUntil).toISOString()}`);
    }
    versions.splice(i, 1);
    if (versions.length === 0) this.objects.delete(key);
  }

  async extendRetention(key: string, versionId: string, lock: ObjectLock, opts: { signal?: AbortSignal } = {}): Promise<void> {
    throwIfAborted(opts.signal);
    if (!this.objectLock) throw new BulwarkError('BUCKET_NOT_LOCKED', 'the bucket does not have Object Lock enabled');
    const v = this.find(key, versionId);
    const now = this.clock.now();
    if (lock.retainUntil <= now) throw new BulwarkError('INVALID_RETENTION', 'retain-until date must be in the future');
    const until = roundUpToSecond(lock.retainUntil);
    if (v.lock && isLocked(v.lock, now)) {
      if (until < v.lock.retainUntil) {
        throw new BulwarkError('OBJECT_LOCKED', `${key}: retention cannot be shortened (retained until ${new Date(v.lock.retainUntil).toISOString()})`);
      }
      if (v.lock.mode === 'COMPLIANCE' && lock.mode === 'GOVERNANCE') {
        throw new BulwarkError('OBJECT_LOCKED', `${key}: a COMPLIANCE lock cannot be turned into GOVERNANCE`);
      }
    }
    v.lock = { mode: lock.mode, retainUntil: until };
  }

  async bucketConfig(): Promise<BucketConfig> {
    return {
      versioning: this.objectLock ? 'Enabled' : 'Disabled',
      objectLock: this.objectLock,
      ...(this.defaultRetention ? { defaultRetention: { ...this.defaultRetention } } : {}),
    };
  }

  async serverTime(): Promise<number> {
    return this.clock.now();
  }

  /** Test helper: total bytes held, every version included. */
  storedBytes(): number {
    let n = 0;
    for (const versions of this.objects.values()) for (const v of versions) n += v.data?.length ?? 0;
    return n;
  }

  private find(key: string, versionId: string | undefined): Version {
    const versions = this.objects.get(key);
    const v = versionId === undefined ? versions?.at(-1) : versions?.find((x) => x.versionId === versionId);
    if (!v || v.data === null) {
      throw new BulwarkError('NOT_FOUND', versionId ? `${key} has no version ${versionId}` : `${key} does not exist`);
    }
    return v;
  }

  private sortedKeys(prefix: string): string[] {
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort(compareKeys);
  }

  private newVersionId(): string {
    // increasing and unique, shaped like an opaque id
    this.seq++;
    return `${this.seq.toString().padStart(10, '0')}.${createHash('sha1').update(randomBytes(8)).digest('hex').slice(0, 12)}`;
  }
}

/** S3 lists keys in UTF-8 byte order. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}
