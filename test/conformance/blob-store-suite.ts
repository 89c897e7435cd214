/**
 * The BlobStore conformance suite (restic's backend/test/suite.go): one set of behaviours that
 * every store must show, run against MemoryStore in the unit project and against the real RGW in
 * the integration project. A fake that passes here behaves like a locked bucket where it matters.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { BlobStore, ObjectLock } from '../../common/storage/blob-store.js';
import { BulwarkError, type ErrorCode } from '../../common/errors.js';

export interface ConformanceHarness {
  /** A fresh, empty store on a bucket with versioning and Object Lock. */
  lockedStore(): Promise<BlobStore>;
  /** A fresh store on a bucket without Object Lock. */
  plainStore(): Promise<BlobStore>;
  /** Let the store's clock pass `ms` (advance a fake clock, or really wait). */
  pass(ms: number): Promise<void>;
  /** Length of the lock used in tests: long enough to act before it ends, short enough to wait out. */
  lockMs: number;
}

export async function codeOf(p: Promise<unknown>): Promise<ErrorCode> {
  try {
    await p;
  } catch (err) {
    if (err instanceof BulwarkError) return err.code;
    throw err;
  }
  throw new Error('expected a BulwarkError, but the call succeeded');
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

export function blobStoreConformance(name: string, h: ConformanceHarness): void {
  describe(`BlobStore conformance: ${name}`, () => {
    const lockFor = async (store: BlobStore, ms = h.lockMs): Promise<ObjectLock> => ({
      mode: 'COMPLIANCE',
      retainUntil: (await store.serverTime()) + ms,
    });

    it('puts and gets bytes, whole and by range, by version', async () => {
      const s = await h.lockedStore();
      const a = randomBytes(10_000);
      const b = randomBytes(5_000);
      const va = await s.put('k/one', a, { lock: await lockFor(s, 60_000) });
      const vb = await s.put('k/one', b, { lock: await lockFor(s, 60_000) });
      expect(va.versionId).not.toBe(vb.versionId);
      expect(Buffer.from(await s.get('k/one')).equals(b)).toBe(true);
      expect(Buffer.from(await s.get('k/one', { versionId: va.versionId })).equals(a)).toBe(true);
      const part = await s.get('k/one', { versionId: va.versionId, range: { offset: 1234, length: 4321 } });
      expect(Buffer.from(part).equals(a.subarray(1234, 1234 + 4321))).toBe(true);
    });

    it('a body that does not match the SHA-256 given with it is refused (CHECKSUM_MISMATCH); a matching one is stored', async () => {
      const s = await h.lockedStore();
      const body = randomBytes(3_000);
      const sha256 = createHash('sha256').update(body).digest('hex');
      const wrong = createHash('sha256').update(randomBytes(8)).digest('hex');
      expect(await codeOf(s.put('sha/bad', body, { lock: await lockFor(s), sha256: wrong }))).toBe('CHECKSUM_MISMATCH');
      expect(await codeOf(s.head('sha/bad'))).toBe('NOT_FOUND');
      await s.put('sha/good', body, { lock: await lockFor(s), sha256 });
      expect(Buffer.from(await s.get('sha/good')).equals(body)).toBe(true);
    });

    it('a range past the end of a version is CHECKSUM_MISMATCH (a short, non-genuine version)', async () => {
      const s = await h.lockedStore();
      await s.put('short', randomBytes(100));
      expect(await codeOf(s.get('short', { range: { offset: 5000, length: 10 } }))).toBe('CHECKSUM_MISMATCH');
    });

    it('heads an object with its lock', async () => {
      const s = await h.lockedStore();
      const lock = await lockFor(s, 60_000);
      const { versionId } = await s.put('h', randomBytes(100), { lock });
      const info = await s.head('h');
      expect(info.versionId).toBe(versionId);
      expect(info.size).toBe(100);
      expect(info.lock?.mode).toBe('COMPLIANCE');
      // whole seconds on the wire, rounded up: never earlier than asked
      expect(info.lock!.retainUntil).toBeGreaterThanOrEqual(lock.retainUntil);
      expect(info.lock!.retainUntil).toBeLessThan(lock.retainUntil + 2_000);
    });

    it('missing keys and versions are NOT_FOUND', async () => {
      const s = await h.lockedStore();
      expect(await codeOf(s.get('nope'))).toBe('NOT_FOUND');
      expect(await codeOf(s.head('nope'))).toBe('NOT_FOUND');
      await s.put('x', randomBytes(10));
      const vs = await collect(s.listVersions('x'));
      expect(vs).toHaveLength(1);
    });

    it('lists current keys under a prefix in order, and versions newest first', async () => {
      const s = await h.lockedStore();
      for (const k of ['p/b', 'p/a', 'p/c/d', 'q/z']) await s.put(k, Buffer.from(k));
      await s.put('p/a', Buffer.from('again'));
      await s.delete('p/b'); // delete marker hides it from list
      const keys = (await collect(s.list('p/'))).map((e) => e.key);
      expect(keys).toEqual(['p/a', 'p/c/d']);
      const versions = await collect(s.listVersions('p/'));
      const pa = versions.filter((v) => v.key === 'p/a');
      expect(pa).toHaveLength(2);
      expect(pa[0]!.isLatest).toBe(true);
      expect(pa[0]!.size).toBe(5);
      const pb = versions.filter((v) => v.key === 'p/b');
      expect(pb.map((v) => v.isDeleteMarker)).toEqual([true, false]);
      expect(versions.map((v) => v.key)).toEqual(['p/a', 'p/a', 'p/b', 'p/b', 'p/c/d']);
    });

    it('refuses to delete a locked version, and deletes it once the lock has passed', async () => {
      const s = await h.lockedStore();
      const { versionId } = await s.put('locked', randomBytes(64), { lock: await lockFor(s) });
      expect(await codeOf(s.delete('locked', { versionId }))).toBe('OBJECT_LOCKED');
      expect((await s.head('locked', { versionId })).versionId).toBe(versionId);
      await h.pass(h.lockMs + 1_500);
      await s.delete('locked', { versionId });
      expect(await codeOf(s.head('locked', { versionId }))).toBe('NOT_FOUND');
    });

    it('a plain delete adds a marker; the locked version still reads back by id', async () => {
      const s = await h.lockedStore();
      const body = randomBytes(333);
      const { versionId } = await s.put('m', body, { lock: await lockFor(s, 60_000) });
      await s.delete('m');
      expect(await codeOf(s.get('m'))).toBe('NOT_FOUND');
      expect(Buffer.from(await s.get('m', { versionId })).equals(body)).toBe(true);
    });

    it('extends retention, refuses to shorten it or weaken COMPLIANCE to GOVERNANCE', async () => {
      const s = await h.lockedStore();
      const lock = await lockFor(s, 60_000);
      const { versionId } = await s.put('e', randomBytes(10), { lock });
      const later = { mode: 'COMPLIANCE' as const, retainUntil: lock.retainUntil + 30_000 };
      await s.extendRetention('e', versionId, later);
      expect((await s.head('e', { versionId })).lock!.retainUntil).toBeGreaterThanOrEqual(later.retainUntil);
      expect(await codeOf(s.extendRetention('e', versionId, { mode: 'COMPLIANCE', retainUntil: lock.retainUntil }))).toBe('OBJECT_LOCKED');
      expect(await codeOf(s.extendRetention('e', versionId, { mode: 'GOVERNANCE', retainUntil: later.retainUntil + 10_000 }))).toBe('OBJECT_LOCKED');
      expect((await s.head('e', { versionId })).lock).toMatchObject({ mode: 'COMPLIANCE' });
    });

    it('an extended lock still refuses deletion after the first date', async () => {
      const s = await h.lockedStore();
      const lock = await lockFor(s);
      const { versionId } = await s.put('x', randomBytes(10), { lock });
      await s.extendRetention('x', versionId, { mode: 'COMPLIANCE', retainUntil: lock.retainUntil + 60_000 });
      await h.pass(h.lockMs + 1_500);
      expect(await codeOf(s.delete('x', { versionId }))).toBe('OBJECT_LOCKED');
    });

    it('refuses a lock date in the past', async () => {
      const s = await h.lockedStore();
      const past = { mode: 'COMPLIANCE' as const, retainUntil: (await s.serverTime()) - 60_000 };
      expect(await codeOf(s.put('past', randomBytes(10), { lock: past }))).toBe('INVALID_RETENTION');
    });

    it('reports the bucket configuration and a sane server clock', async () => {
      const s = await h.lockedStore();
      const cfg = await s.bucketConfig();
      expect(cfg.versioning).toBe('Enabled');
      expect(cfg.objectLock).toBe(true);
      const t = await s.serverTime();
      expect(Math.abs(t - Date.now())).toBeLessThan(5 * 60_000);
    });

    it('refuses a lock on a bucket without Object Lock', async () => {
      const s = await h.plainStore();
      const cfg = await s.bucketConfig();
      expect(cfg.objectLock).toBe(false);
      expect(await codeOf(s.put('k', randomBytes(10), { lock: await lockFor(s, 60_000) }))).toBe('BUCKET_NOT_LOCKED');
    });
  });
}
