/**
 * The one place where a BlobStore is assembled: Limited(Retrying(raw)). The retry wrapper sits
 * inside the limiter on purpose: a request waiting out a backoff keeps its slot, so a throttled
 * endpoint sees fewer requests in flight, not the same number.
 */
import type { BlobStore } from './blob-store.js';
import { S3Store, type S3StoreOptions } from './s3-store.js';
import { LimitedStore, RetryingStore, type RetryOptions } from './wrappers.js';

export interface StoreStackOptions {
  retry?: RetryOptions;
  /** Requests in flight at once. */
  concurrency?: number;
}

export function wrapStore(raw: BlobStore, o: StoreStackOptions = {}): BlobStore {
  // 8 in flight keeps a 2-core agent's pipeline fed on a LAN and is gentle on small gateways
  return new LimitedStore(new RetryingStore(raw, o.retry), o.concurrency ?? 8);
}

export function openS3Store(s3: S3StoreOptions, o: StoreStackOptions = {}): BlobStore {
  return wrapStore(new S3Store({ maxSockets: Math.max(32, (o.concurrency ?? 8) * 2), ...s3 }), o);
}
