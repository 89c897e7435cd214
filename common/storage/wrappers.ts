/**
 * BlobStore wrappers: behaviour that is not storage, stacked around any store (restic's
 * wrapBackend, kopia's beforeop). Each wrapper implements BlobStore and forwards to `inner`.
 *
 *   RetryingStore  retries THROTTLED/TRANSIENT errors with capped exponential backoff and full
 *                  jitter, within a time budget, so a flaky endpoint slows a backup rather than
 *                  failing it, and a dead one fails it after a bounded time with the last error.
 *   LimitedStore   bounds the requests in flight (a semaphore), so callers may fan out freely.
 *
 * open-store.ts stacks them in one place.
 */
import { BulwarkError, asBulwarkError, throwIfAborted } from '../errors.js';
import type { BlobStore, BucketConfig, GetOptions, ListEntry, ObjectInfo, ObjectLock, PutOptions, PutResult, VersionEntry } from './blob-store.js';

export interface RetryOptions {
  /** Attempts per request, the first included. */
  maxAttempts?: number;
  /** First backoff; each retry doubles it, up to maxDelayMs, then a random fraction is taken. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Give up when this much time has passed since the first attempt, whatever maxAttempts says. */
  budgetMs?: number;
  /** Called before each retry, for logs and metrics. */
  onRetry?: (what: string, attempt: number, err: BulwarkError, delayMs: number) => void;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export function compileRetryOptions(o: RetryOptions = {}): Required<Omit<RetryOptions, 'onRetry'>> & Pick<RetryOptions, 'onRetry'> {
  return {
    // 8 attempts with a 10 s cap ride out an RGW or S3 hiccup of about a minute
    maxAttempts: o.maxAttempts ?? 8,
    baseDelayMs: o.baseDelayMs ?? 200,
    maxDelayMs: o.maxDelayMs ?? 10_000,
    // a backup should fail clearly rather than hang: 3 minutes per request at most
    budgetMs: o.budgetMs ?? 180_000,
    sleep: o.sleep ?? abortableSleep,
    ...(o.onRetry ? { onRetry: o.onRetry } : {}),
  };
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new BulwarkError('ABORTED', 'operation cancelled'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new BulwarkError('ABORTED', 'operation cancelled'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class RetryingStore implements BlobStore {
  readonly description: string;
  /** Presigning is local work, nothing to retry: the inner store's, when it has one. */
  readonly directRead?: BlobStore['directRead'];
  private readonly o: ReturnType<typeof compileRetryOptions>;

  constructor(
    private readonly inner: BlobStore,
    opts: RetryOptions = {},
  ) {
    this.description = inner.description;
    if (inner.directRead) this.directRead = inner.directRead;
    this.o = compileRetryOptions(opts);
  }

  private async retry<T>(what: string, signal: AbortSignal | undefined, op: () => Promise<T>): Promise<T> {
    const start = Date.now();
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      try {
        return await op();
      } catch (raw) {
        const err = asBulwarkError(raw);
        if (!err.retryable || attempt >= this.o.maxAttempts) throw err;
        const cap = Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** (attempt - 1));
        const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
        if (Date.now() - start + delay > this.o.budgetMs) throw err;
        this.o.onRetry?.(what, attempt, err, delay);
        await this.o.sleep(delay, signal);
      }
    }
  }

  put(key: string, body: Uint8Array, opts?: PutOptions): Promise<PutResult> {
    return this.retry(`put ${key}`, opts?.signal, () => this.inner.put(key, body, opts));
  }
  get(key: string, opts?: GetOptions): Promise<Uint8Array> {
    return this.retry(`get ${key}`, opts?.signal, () => this.inner.get(key, opts));
  }
  head(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<ObjectInfo> {
    return this.retry(`head ${key}`, opts?.signal, () => this.inner.head(key, opts));
  }
  async *list(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<ListEntry> {
    // A listing that fails part-way restarts after the last key already yielded.
    let last: string | undefined;
    yield* this.resumable(opts?.signal, `list ${prefix}`, () => this.inner.list(prefix, opts), (e) => {
      if (last !== undefined && e.key <= last) return false;
      last = e.key;
      return true;
    });
  }
  async *listVersions(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<VersionEntry> {
    const seen = new Set<string>();
    let lastKey: string | undefined;
    yield* this.resumable(opts?.signal, `list versions ${prefix}`, () => this.inner.listVersions(prefix, opts), (e) => {
      if (lastKey !== undefined && e.key < lastKey) return false;
      if (e.key !== lastKey) seen.clear();
      lastKey = e.key;
      const id = e.versionId;
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
  }
  delete(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<void> {
    return this.retry(`delete ${key}`, opts?.signal, () => this.inner.delete(key, opts));
  }
  extendRetention(key: string, versionId: string, lock: ObjectLock, opts?: { signal?: AbortSignal }): Promise<void> {
    return this.retry(`extend ${key}`, opts?.signal, () => this.inner.extendRetention(key, versionId, lock, opts));
  }
  bucketConfig(opts?: { signal?: AbortSignal }): Promise<BucketConfig> {
    return this.retry('bucket config', opts?.signal, () => this.inner.bucketConfig(opts));
  }
  serverTime(opts?: { signal?: AbortSignal }): Promise<number> {
    return this.retry('server time', opts?.signal, () => this.inner.serverTime(opts));
  }

  /** Re-run a listing after a retryable failure, skipping what `fresh` says was already yielded. */
  private async *resumable<T>(signal: AbortSignal | undefined, what: string, open: () => AsyncIterable<T>, fresh: (e: T) => boolean): AsyncIterable<T> {
    // the budget runs from the first attempt, or from the last entry the listing delivered (and
    // the caller took): a long listing that made progress is not failed by the time it spent
    // succeeding, nor by the time its caller spent between entries
    let start = Date.now();
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      try {
        for await (const e of open()) {
          if (fresh(e)) yield e;
          start = Date.now();
        }
        return;
      } catch (raw) {
        const err = asBulwarkError(raw);
        if (!err.retryable || attempt >= this.o.maxAttempts) throw err;
        const delay = Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** (attempt - 1));
        if (Date.now() - start + delay > this.o.budgetMs) throw err;
        this.o.onRetry?.(what, attempt, err, delay);
        await this.o.sleep(delay, signal);
      }
    }
  }
}

/** A counting semaphore. */
export class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {
    if (!(limit >= 1)) throw new BulwarkError('INVALID_ARGUMENT', `a concurrency limit must be at least 1, not ${limit}`);
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

export class LimitedStore implements BlobStore {
  readonly description: string;
  /** The inner store's; requests made with it are the caller's to bound (the restore does). */
  readonly directRead?: BlobStore['directRead'];
  private readonly sem: Semaphore;
  constructor(
    private readonly inner: BlobStore,
    limit: number,
  ) {
    this.description = inner.description;
    if (inner.directRead) this.directRead = inner.directRead;
    this.sem = new Semaphore(limit);
  }
  put(key: string, body: Uint8Array, opts?: PutOptions): Promise<PutResult> {
    return this.sem.run(() => this.inner.put(key, body, opts));
  }
  get(key: string, opts?: GetOptions): Promise<Uint8Array> {
    return this.sem.run(() => this.inner.get(key, opts));
  }
  head(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<ObjectInfo> {
    return this.sem.run(() => this.inner.head(key, opts));
  }
  list(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<ListEntry> {
    return this.inner.list(prefix, opts);
  }
  listVersions(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<VersionEntry> {
    return this.inner.listVersions(prefix, opts);
  }
  delete(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<void> {
    return this.sem.run(() => this.inner.delete(key, opts));
  }
  extendRetention(key: string, versionId: string, lock: ObjectLock, opts?: { signal?: AbortSignal }): Promise<void> {
    return this.sem.run(() => this.inner.extendRetention(key, versionId, lock, opts));
  }
  bucketConfig(opts?: { signal?: AbortSignal }): Promise<BucketConfig> {
    return this.sem.run(() => this.inner.bucketConfig(opts));
  }
  serverTime(opts?: { signal?: AbortSignal }): Promise<number> {
    return this.sem.run(() => this.inner.serverTime(opts));
  }
}
