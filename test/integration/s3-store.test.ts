import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { describe, expect, it } from 'vitest';
import { S3Store } from '../../common/storage/s3-store.js';
import { blobStoreConformance } from '../conformance/blob-store-suite.js';
import { createLockedBucket, createPlainBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const cfg = s3Config();
const raw = rawClient(cfg);
const storeFor = (bucket: string) =>
  new S3Store({ endpoint: cfg.endpoint, region: cfg.region, bucket, prefix: 'repo', accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey });

blobStoreConformance('S3Store on the real server', {
  lockedStore: async () => storeFor(await createLockedBucket(raw, 'conf')),
  plainStore: async () => storeFor(await createPlainBucket(raw, 'confplain')),
  pass: (ms) => sleep(ms),
  lockMs: 3_000,
});

describe('S3Store.directRead: presigned GETs for the restore workers, on the real server', () => {
  const get = (url: string, range?: string) =>
    new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      http
        .get(url, range ? { headers: { range } } : {}, (res) => {
          const parts: Buffer[] = [];
          res.on('data', (c: Buffer) => parts.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
        })
        .on('error', reject);
    });

  it('reads any range of an object with an awkward key, and a given version behind a newer one', async () => {
    const store = new S3Store({ endpoint: cfg.endpoint, region: cfg.region, bucket: await createLockedBucket(raw, 'direct'), prefix: 'a prefix!/(x)', accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey });
    const key = "packs/ab/é space+plus(1)'*~";
    const first = randomBytes(100_000);
    const v1 = await store.put(key, first);
    const d = await store.directRead!(key);
    expect(d.expiresAt).toBeGreaterThan(Date.now() + 60_000);
    const r = await get(d.url, 'bytes=1000-50999');
    expect(r.status).toBe(206);
    expect(r.body.equals(first.subarray(1000, 51000))).toBe(true);
    // a newer version: the plain URL reads it, the versioned one still the first
    const second = randomBytes(1000);
    await store.put(key, second);
    expect((await get((await store.directRead!(key)).url, 'bytes=0-999')).body.equals(second)).toBe(true);
    const old = await get((await store.directRead!(key, { versionId: v1.versionId })).url, 'bytes=99990-99999');
    expect(old.status).toBe(206);
    expect(old.body.equals(first.subarray(99990))).toBe(true);
  });

  it('a URL with its signature altered, or for a missing key, is refused', async () => {
    const store = storeFor(await createLockedBucket(raw, 'direct2'));
    await store.put('k', randomBytes(10));
    const url = (await store.directRead!('k')).url;
    const forged = url.replace(/X-Amz-Signature=([0-9a-f])/, (_m, c: string) => `X-Amz-Signature=${c === '0' ? '1' : '0'}`);
    expect(forged).not.toBe(url);
    expect((await get(forged, 'bytes=0-9')).status).toBe(403);
    expect((await get((await store.directRead!('missing')).url, 'bytes=0-9')).status).toBe(404);
  });
});
