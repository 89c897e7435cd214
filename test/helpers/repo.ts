/**
 * A fresh repository on the real S3 (a new bucket with Object Lock per call), for integration tests.
 */
import { Repository } from '../../common/repo/repository.js';
import type { BlobStore } from '../../common/storage/blob-store.js';
import { openS3Store } from '../../common/storage/open-store.js';
import { createLockedBucket, rawClient, s3Config } from './s3.js';

export const TEST_PASSPHRASE = 'integration test passphrase';

/** Small chunks and packs so that small test trees still exercise multi-chunk files and many packs. */
export const SMALL_REPO = { chunker: { minSize: 64 * 1024, avgSize: 256 * 1024, maxSize: 1024 * 1024 }, packSize: 2 * 1024 * 1024 };

export async function freshS3Store(prefix: string): Promise<{ store: BlobStore; bucket: string }> {
  const cfg = s3Config();
  const bucket = await createLockedBucket(rawClient(cfg), prefix);
  const store = openS3Store({ endpoint: cfg.endpoint, region: cfg.region, bucket, prefix: 'repo', accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey });
  return { store, bucket };
}

export async function freshRepo(prefix: string, lockMs = 3_600_000): Promise<{ store: BlobStore; repo: Repository; bucket: string; lock: { mode: 'COMPLIANCE'; retainUntil: number } }> {
  const { store, bucket } = await freshS3Store(prefix);
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + lockMs };
  const repo = await Repository.init(store, { passphrase: TEST_PASSPHRASE, lock, config: SMALL_REPO });
  return { store, repo, bucket, lock };
}
