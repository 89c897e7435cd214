/**
 * S3Store: BlobStore over @aws-sdk/client-s3, for AWS, Ceph RGW, MinIO, Wasabi, B2 and friends.
 *
 * It only translates: BlobStore calls into S3 requests, and SDK errors into BulwarkErrors with
 * stable codes. Retries, concurrency limits and the choice of locks live elsewhere (wrappers.ts,
 * the lock planner).
 *
 * Settings that work on RGW, AWS and MinIO alike (docs/s3-local.md):
 *   - path-style addressing (option), region us-east-1 unless told;
 *   - requestChecksumCalculation WHEN_REQUIRED: the SDK's default sends bodies aws-chunked with a
 *     trailing checksum, which RGW 16.2 refuses (411);
 *   - every PUT carries the body's SHA-256 twice: as the SigV4 payload hash (x-amz-content-sha256),
 *     which every S3 server verifies (RGW 16.2 refuses a wrong one: XAmzContentSHA256Mismatch), and
 *     as x-amz-checksum-sha256, the checksum AWS demands with lock headers (RGW 16.2 ignores it).
 *     A pack's id is that SHA-256, so the agent hashes each pack once for its name, its signature
 *     and its checksum; the SDK does not hash the body again;
 *   - single PUTs only, never multipart or CopyObject: RGW 16.2 drops lock headers on both;
 *   - maxAttempts 1: retrying is RetryingStore's job, so every store retries the same way.
 */
import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import {
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { SignatureV4 } from '@smithy/signature-v4';
import { BulwarkError, type ErrorCode } from '../errors.js';
import {
  type BlobStore,
  type BucketConfig,
  type DirectRead,
  type GetOptions,
  type ListEntry,
  type ObjectInfo,
  type ObjectLock,
  type PutOptions,
  type PutResult,
  type VersionEntry,
  roundUpToSecond,
} from './blob-store.js';

export interface S3StoreOptions {
  endpoint?: string;
  region?: string;
  bucket: string;
  /** Key prefix inside the bucket ("" or e.g. "fleet-a"); stored keys are `${prefix}/${key}`. */
  prefix?: string;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  forcePathStyle?: boolean;
  /** Per-request timeout. */
  requestTimeoutMs?: number;
  /** Sockets kept open to the endpoint. */
  maxSockets?: number;
}

export function compileS3StoreOptions(o: S3StoreOptions): Required<Omit<S3StoreOptions, 'endpoint' | 'sessionToken'>> &
  Pick<S3StoreOptions, 'endpoint' | 'sessionToken'> {
  if (!o.bucket) throw new BulwarkError('INVALID_ARGUMENT', 'an S3 target needs a bucket name');
  return {
    ...o,
    region: o.region ?? 'us-east-1',
    prefix: (o.prefix ?? '').replace(/^\/+|\/+$/g, ''),
    // self-hosted S3 (RGW, MinIO) rarely has wildcard DNS for virtual-host style; AWS accepts both
    forcePathStyle: o.forcePathStyle ?? o.endpoint !== undefined,
    // a 16 MiB pack at a slow 2 MB/s takes 8 s; 120 s leaves room without hanging forever on a stall
    requestTimeoutMs: o.requestTimeoutMs ?? 120_000,
    // enough for the agent's upload/restore concurrency (≤ 16) plus listing and heads
    maxSockets: o.maxSockets ?? 32,
  };
}

/**
 * A plain SDK client for raw calls outside S3Store (the drill's attacks, bucket housekeeping in
 * scripts and tests), with the settings that work on RGW, AWS and MinIO: path-style addressing, and
 * checksums only where an operation requires them (RGW rejects the SDK's default CRC trailers).
 */
export function rawS3Client(c: { endpoint?: string; region?: string; accessKeyId: string; secretAccessKey: string }): S3Client {
  return new S3Client({
    ...(c.endpoint ? { endpoint: c.endpoint } : {}),
    region: c.region ?? 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** RFC 3986 escaping as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
function escapeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

const bytesOf = (d: ArrayBuffer | ArrayBufferView): Uint8Array => (ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d));

/** SHA-256 and HMAC-SHA256 in the shape SignatureV4 expects. */
class Sha256 {
  private readonly h;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', typeof secret === 'string' ? secret : bytesOf(secret));
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.h.update(typeof data === 'string' ? data : bytesOf(data));
  }
  async digest(): Promise<Uint8Array> {
    return this.h.digest();
  }
}

export class S3Store implements BlobStore {
  readonly description: string;
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private lastServerDate = 0;
  /** Server clock minus ours (ms), from the last Date header: presigned URLs are dated by the server's clock. */
  private clockOffset = 0;
  private readonly signer: SignatureV4;
  private readonly base: { protocol: string; hostname: string; port?: number; pathStyle: boolean };
  private readonly requestTimeoutMs: number;

  constructor(options: S3StoreOptions) {
    const o = compileS3StoreOptions(options);
    this.bucket = o.bucket;
    this.prefix = o.prefix === '' ? '' : `${o.prefix}/`;
    this.description = `s3://${o.bucket}/${o.prefix}${o.endpoint ? ` at ${o.endpoint}` : ''}`;
    this.requestTimeoutMs = o.requestTimeoutMs;
    const endpoint = new URL(o.endpoint ?? `https://s3.${o.region}.amazonaws.com`);
    this.base = {
      protocol: endpoint.protocol,
      hostname: endpoint.hostname,
      ...(endpoint.port ? { port: Number(endpoint.port) } : {}),
      // a bucket name with dots does not match the wildcard certificate of virtual-host style
      pathStyle: o.forcePathStyle || o.bucket.includes('.'),
    };
    this.signer = new SignatureV4({
      service: 's3',
      region: o.region,
      credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey, ...(o.sessionToken ? { sessionToken: o.sessionToken } : {}) },
      sha256: Sha256,
      uriEscapePath: false, // S3 signs the path as sent (each key segment escaped once, below)
      applyChecksum: false,
    });
    const agentOpts = { keepAlive: true, maxSockets: o.maxSockets };
    this.client = new S3Client({
      ...(o.endpoint ? { endpoint: o.endpoint } : {}),
      region: o.region,
      forcePathStyle: o.forcePathStyle,
      credentials: {
        accessKeyId: o.accessKeyId,
        secretAccessKey: o.secretAccessKey,
        ...(o.sessionToken ? { sessionToken: o.sessionToken } : {}),
      },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
      requestHandler: new NodeHttpHandler({
        connectionTimeout: 10_000,
        // requestTimeout bounds a request up to its response headers, but smithy only logs a
        // warning when it passes unless throwOnRequestTimeout is set; socketTimeout (idle) ends a
        // response body that stops arriving. Without both, a stalled server hangs us forever.
        requestTimeout: o.requestTimeoutMs,
        throwOnRequestTimeout: true,
        socketTimeout: o.requestTimeoutMs,
        httpAgent: new http.Agent(agentOpts),
        httpsAgent: new https.Agent(agentOpts),
      }),
    });
    // Keep the server's Date header: the bucket's clock decides when locks end.
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const out = await next(args);
        const headers = (out.response as { headers?: Record<string, string> }).headers;
        const date = headers?.date ? Date.parse(headers.date) : NaN;
        if (!Number.isNaN(date)) {
          this.lastServerDate = date;
          this.clockOffset = date - Date.now();
        }
        return out;
      },
      { step: 'deserialize', name: 'bulwarkServerDate' },
    );
    // The SigV4 payload hash of a PUT is the body's SHA-256 we computed or were given (put() passes
    // it as ChecksumSHA256): the SDK would otherwise hash each 16 MiB pack again.
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const req = args.request as { headers?: Record<string, string> };
        const checksum = req.headers?.['x-amz-checksum-sha256'];
        if (context.commandName === 'PutObjectCommand' && req.headers && checksum) req.headers['x-amz-content-sha256'] = Buffer.from(checksum, 'base64').toString('hex');
        return next(args);
      },
      { step: 'build', name: 'bulwarkPayloadHash' },
    );
  }

  private k(key: string): string {
    return this.prefix + key;
  }

  async put(key: string, body: Uint8Array, opts: PutOptions = {}): Promise<PutResult> {
    const sha256 = opts.sha256 ?? createHash('sha256').update(body).digest('hex');
    try {
      const out = await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.k(key),
          Body: body,
          ContentLength: body.length,
          ChecksumSHA256: Buffer.from(sha256, 'hex').toString('base64'),
          ...(opts.lock
            ? { ObjectLockMode: opts.lock.mode, ObjectLockRetainUntilDate: new Date(roundUpToSecond(opts.lock.retainUntil)) }
            : {}),
        }),
        { abortSignal: opts.signal },
      );
      return { versionId: out.VersionId ?? 'null' };
    } catch (err) {
      throw translate(err, `put ${key}`, { lock: opts.lock !== undefined });
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Uint8Array> {
    const range = opts.range ? `bytes=${opts.range.offset}-${opts.range.offset + opts.range.length - 1}` : undefined;
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.k(key),
          ...(opts.versionId ? { VersionId: opts.versionId } : {}),
          ...(range ? { Range: range } : {}),
        }),
        { abortSignal: opts.signal },
      );
      const bytes = await out.Body!.transformToByteArray();
      // a connection cut mid-body can surface as a short read rather than an error
      if (out.ContentLength !== undefined && bytes.length !== out.ContentLength) {
        throw new BulwarkError('TRANSIENT', `get ${key}: body truncated (${bytes.length} of ${out.ContentLength} bytes)`);
      }
      return bytes;
    } catch (err) {
      throw translate(err, `get ${key}`);
    }
  }

  /**
   * A presigned GET (SigV4 query parameters, UNSIGNED-PAYLOAD, valid 15 minutes by the server's
   * clock) of one object; the caller adds a Range header. Used by the restore's write workers,
   * which fetch and verify pack ranges themselves.
   */
  readonly directRead = async (key: string, opts: { versionId?: string } = {}): Promise<DirectRead> => {
    const path = (this.base.pathStyle ? `/${this.bucket}/` : '/') + this.k(key).split('/').map(escapeSegment).join('/');
    const hostname = this.base.pathStyle ? this.base.hostname : `${this.bucket}.${this.base.hostname}`;
    const host = hostname + (this.base.port !== undefined ? `:${this.base.port}` : '');
    const expiresIn = 900;
    const now = Date.now();
    const signed = await this.signer.presign(
      {
        method: 'GET',
        protocol: this.base.protocol,
        hostname,
        ...(this.base.port !== undefined ? { port: this.base.port } : {}),
        path,
        query: opts.versionId ? { versionId: opts.versionId } : {},
        headers: { host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
      },
      { expiresIn, signingDate: new Date(now + this.clockOffset) },
    );
    const query = Object.entries(signed.query ?? {})
      .map(([k, v]) => `${escapeSegment(k)}=${escapeSegment(String(v))}`)
      .join('&');
    // a minute of margin: a URL handed out now may wait in a queue before it is used
    return { url: `${this.base.protocol}//${host}${path}?${query}`, expiresAt: now + (expiresIn - 60) * 1000, timeoutMs: this.requestTimeoutMs };
  };

  async head(key: string, opts: { versionId?: string; signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.k(key), ...(opts.versionId ? { VersionId: opts.versionId } : {}) }),
        { abortSignal: opts.signal },
      );
      const lock: ObjectLock | undefined =
        out.ObjectLockMode && out.ObjectLockRetainUntilDate
          ? { mode: out.ObjectLockMode as ObjectLock['mode'], retainUntil: out.ObjectLockRetainUntilDate.getTime() }
          : undefined;
      return {
        key,
        versionId: out.VersionId ?? 'null',
        size: out.ContentLength ?? 0,
        lastModified: out.LastModified?.getTime() ?? 0,
        ...(lock ? { lock } : {}),
        ...(out.ObjectLockLegalHoldStatus ? { legalHold: out.ObjectLockLegalHoldStatus === 'ON' } : {}),
      };
    } catch (err) {
      throw translate(err, `head ${key}`);
    }
  }

  async *list(prefix: string, opts: { signal?: AbortSignal } = {}): AsyncIterable<ListEntry> {
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.k(prefix), ...(token ? { ContinuationToken: token } : {}) }),
          { abortSignal: opts.signal },
        );
      } catch (err) {
        throw translate(err, `list ${prefix}`);
      }
      for (const o of out.Contents ?? []) {
        yield { key: o.Key!.slice(this.prefix.length), size: o.Size ?? 0, lastModified: o.LastModified?.getTime() ?? 0 };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async *listVersions(prefix: string, opts: { signal?: AbortSignal } = {}): AsyncIterable<VersionEntry> {
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      let out;
      try {
        out = await this.client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: this.k(prefix),
            ...(keyMarker ? { KeyMarker: keyMarker } : {}),
            ...(versionMarker ? { VersionIdMarker: versionMarker } : {}),
          }),
          { abortSignal: opts.signal },
        );
      } catch (err) {
        throw translate(err, `list versions ${prefix}`);
      }
      // S3 returns versions and delete markers in two lists; merge them back into one order:
      // keys ascending, newest first within a key.
      const page: VersionEntry[] = [
        ...(out.Versions ?? []).map((v) => ({
          key: v.Key!.slice(this.prefix.length),
          versionId: v.VersionId ?? 'null',
          size: v.Size ?? 0,
          lastModified: v.LastModified?.getTime() ?? 0,
          isLatest: v.IsLatest ?? false,
          isDeleteMarker: false,
        })),
        ...(out.DeleteMarkers ?? []).map((d) => ({
          key: d.Key!.slice(this.prefix.length),
          versionId: d.VersionId ?? 'null',
          size: 0,
          lastModified: d.LastModified?.getTime() ?? 0,
          isLatest: d.IsLatest ?? false,
          isDeleteMarker: true,
        })),
      ];
      page.sort((a, b) => (a.key === b.key ? Number(b.isLatest) - Number(a.isLatest) || b.lastModified - a.lastModified : a.key < b.key ? -1 : 1));
      yield* page;
      if (!out.IsTruncated) return;
      keyMarker = out.NextKeyMarker;
      versionMarker = out.NextVersionIdMarker;
    }
  }

  async delete(key: string, opts: { versionId?: string; signal?: AbortSignal } = {}): Promise<void> {
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key), ...(opts.versionId ? { VersionId: opts.versionId } : {}) }),
        { abortSignal: opts.signal },
      );
    } catch (err) {
      const e = translate(err, `delete ${key}`);
      // S3 answers 403 both for "no permission" and "locked": ask the version which it is
      if (e.code === 'ACCESS_DENIED' && opts.versionId) {
        const lock = await this.head(key, { versionId: opts.versionId }).then((h) => h.lock, () => undefined);
        const now = await this.serverTime().catch(() => Date.now());
        if (lock && lock.retainUntil > now) {
          throw new BulwarkError('OBJECT_LOCKED', `${key} (version ${opts.versionId}) is retained until ${new Date(lock.retainUntil).toISOString()}`, { cause: err });
        }
      }
      throw e;
    }
  }

  async extendRetention(key: string, versionId: string, lock: ObjectLock, opts: { signal?: AbortSignal } = {}): Promise<void> {
    try {
      await this.client.send(
        new PutObjectRetentionCommand({
          Bucket: this.bucket,
          Key: this.k(key),
          VersionId: versionId,
          Retention: { Mode: lock.mode, RetainUntilDate: new Date(roundUpToSecond(lock.retainUntil)) },
        }),
        { abortSignal: opts.signal },
      );
    } catch (err) {
      const e = translate(err, `extend retention of ${key}`, { lock: true });
      if (e.code === 'ACCESS_DENIED') {
        // 403 also means "this would shorten or weaken a lock": find out which
        const current = await this.head(key, { versionId }).then((h) => h.lock, () => undefined);
        if (current && (current.retainUntil > roundUpToSecond(lock.retainUntil) || (current.mode === 'COMPLIANCE' && lock.mode === 'GOVERNANCE'))) {
          throw new BulwarkError('OBJECT_LOCKED', `${key}: retention cannot be shortened or weakened (retained ${current.mode} until ${new Date(current.retainUntil).toISOString()})`, { cause: err });
        }
      }
      throw e;
    }
  }

  async bucketConfig(opts: { signal?: AbortSignal } = {}): Promise<BucketConfig> {
    let versioning: BucketConfig['versioning'];
    try {
      const v = await this.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket }), { abortSignal: opts.signal });
      versioning = v.Status === 'Enabled' ? 'Enabled' : v.Status === 'Suspended' ? 'Suspended' : 'Disabled';
    } catch (err) {
      throw translate(err, `read versioning of bucket ${this.bucket}`);
    }
    try {
      const l = await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }), { abortSignal: opts.signal });
      const cfg = l.ObjectLockConfiguration;
      const d = cfg?.Rule?.DefaultRetention;
      return {
        versioning,
        objectLock: cfg?.ObjectLockEnabled === 'Enabled',
        ...(d?.Mode ? { defaultRetention: { mode: d.Mode, ...(d.Days ? { days: d.Days } : {}), ...(d.Years ? { years: d.Years } : {}) } } : {}),
      };
    } catch (err) {
      if (err instanceof S3ServiceException && err.name === 'ObjectLockConfigurationNotFoundError') return { versioning, objectLock: false };
      throw translate(err, `read Object Lock configuration of bucket ${this.bucket}`);
    }
  }

  async serverTime(opts: { signal?: AbortSignal } = {}): Promise<number> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: opts.signal });
    } catch (err) {
      // HEAD has no body: a missing bucket is a bare 404 'NotFound'
      if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) {
        throw new BulwarkError('NO_SUCH_BUCKET', `${this.description}: the bucket does not exist; create it with Object Lock enabled`, { cause: err });
      }
      throw translate(err, `head bucket ${this.bucket}`);
    }
    return this.lastServerDate;
  }
}

const HINTS: Partial<Record<ErrorCode, string>> = {
  BUCKET_NOT_LOCKED: 'the bucket has no Object Lock; create a new bucket with Object Lock enabled, it cannot be added to most existing buckets',
  ACCESS_DENIED: 'check the access key and the bucket policy for this credential',
  NO_SUCH_BUCKET: 'check the bucket name and region',
  INVALID_RETENTION: 'the retain-until date must be in the future by the server clock; check this machine\'s clock',
};

const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Translate anything the SDK throws into a BulwarkError. Exported for tests. */
export function translate(err: unknown, what: string, ctx: { lock?: boolean } = {}): BulwarkError {
  if (err instanceof BulwarkError) return err;
  const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  const name = e.name ?? '';
  let code: ErrorCode;
  if (name === 'AbortError') code = 'ABORTED';
  else if (name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchVersion' || status === 404 || status === 405) code = name === 'NoSuchBucket' ? 'NO_SUCH_BUCKET' : 'NOT_FOUND';
  else if (name === 'NoSuchBucket') code = 'NO_SUCH_BUCKET';
  else if (name === 'BadDigest' || name === 'InvalidDigest' || name === 'XAmzContentSHA256Mismatch') code = 'CHECKSUM_MISMATCH';
  // a range past the end: this version is shorter than the object we look for (a truncated or
  // garbage overwrite), so it is not the genuine one
  else if (name === 'InvalidRange' || status === 416) code = 'CHECKSUM_MISMATCH';
  else if (name === 'SlowDown' || name === 'Throttling' || name === 'ThrottlingException' || status === 429 || status === 503) code = 'THROTTLED';
  else if (name === 'AccessDenied' || status === 403) code = 'ACCESS_DENIED';
  // With lock headers, RGW and AWS answer 400 InvalidRequest when the bucket has no Object Lock
  // and 400 InvalidArgument for a retain-until date in the past (RGW sends no message for either).
  else if (ctx.lock && name === 'InvalidRequest') code = 'BUCKET_NOT_LOCKED';
  else if (ctx.lock && name === 'InvalidArgument') code = 'INVALID_RETENTION';
  else if (status !== undefined && status >= 500) code = 'TRANSIENT';
  else if (NETWORK_CODES.has(e.code ?? '') || name === 'TimeoutError' || name === 'RequestTimeout') code = 'TRANSIENT';
  // a socket that closed mid-response, a parse of a cut body: no HTTP status, a system error code
  else if (status === undefined && (e.code !== undefined || /socket|network|timeout|ECONN|premature|aborted/i.test(e.message ?? ''))) code = 'TRANSIENT';
  else if (status === 400 && name === 'InvalidRequest') code = 'INVALID_ARGUMENT';
  else code = 'INTERNAL';
  const detail = e.message && e.message !== 'UnknownError' ? e.message : `HTTP ${status ?? '?'}`;
  const hint = HINTS[code];
  return new BulwarkError(code, `${what}: ${name || 'error'}: ${detail}${hint ? ` (${hint})` : ''}`, { cause: err });
}
