/**
 * SealPool: the worker threads must produce exactly what the main thread's format code would —
 * blob ids, the compress-or-not choice, sealed bytes that openBlob accepts — and the pack hashes.
 */
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { compressParts } from '../../common/repo/compress.js';
import { blobId, open } from '../../common/repo/crypto.js';
import { deriveHostKeys, newMasterKey } from '../../common/repo/keys.js';
import { openBlob } from '../../common/repo/pack.js';
import { SealPool } from '../../common/repo/seal-pool.js';

const keys = deriveHostKeys(newMasterKey(), 'host-a');
const pool = new SealPool(keys, { workers: 2 });
afterAll(() => pool.close());

const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(4000));
const samples: Array<[string, Buffer]> = [
  ['random', randomBytes(300_000)],
  ['text', text],
  ['one byte', Buffer.of(7)],
  ['empty', Buffer.alloc(0)],
  ['barely compressible', Buffer.concat([randomBytes(64_000), Buffer.alloc(600)])],
  // large chunks are probed at start, middle and end: both sides must decide alike
  ['large random (probed, raw)', randomBytes(600_000)],
  ['large, compressible only in the middle', Buffer.concat([randomBytes(280_000), Buffer.alloc(40_000), randomBytes(280_000)])],
  ['large, compressible away from the samples (raw)', Buffer.concat([randomBytes(100_000), Buffer.alloc(100_000), randomBytes(400_000)])],
  ['large text', Buffer.from('all work and no play makes jack a dull boy '.repeat(20_000))],
];

describe('SealPool', () => {
  it.each(samples)('seals %s like the main thread', async (_name, plain) => {
    const view = Buffer.concat([randomBytes(5), plain, randomBytes(5)]).subarray(5, 5 + plain.length); // a view, as chunks are
    const s = await pool.seal(view);
    expect(s.id.equals(blobId(keys.id, plain))).toBe(true);
    expect(openBlob(keys, s.id, s.sealed!, plain.length).equals(plain)).toBe(true);
    // the same compress-or-not decision (flag byte) as compress.ts
    const inner = open(keys.enc, s.sealed!, s.id);
    const [flag, body] = compressParts(plain);
    expect(inner[0]).toBe(flag[0]);
    // and the same bytes: the workers compress with the same zstd parameters (zstd is deterministic)
    expect(inner.subarray(1).equals(Buffer.from(body))).toBe(true);
    expect(view.equals(plain)).toBe(true); // the caller's bytes are untouched
  });

  it('probes large chunks: raw when no sample compresses, zstd when one does', () => {
    const flag = (name: string) => compressParts(samples.find(([n]) => n === name)![1])[0][0];
    expect(flag('large random (probed, raw)')).toBe(0);
    expect(flag('large, compressible only in the middle')).toBe(1);
    expect(flag('large, compressible away from the samples (raw)')).toBe(0);
    expect(flag('large text')).toBe(1);
    expect(flag('barely compressible')).toBe(0); // too small to probe: a full attempt, which saves < 1/64
  });

  it('rejects a sealed blob under another id', async () => {
    const s = await pool.seal(randomBytes(1000));
    const other = blobId(keys.id, Buffer.from('other'));
    expect(() => openBlob(keys, other, s.sealed!)).toThrow(/altered|hash/);
  });

  it('hashes a pack (its SHA-256 id) and hands the bytes back', async () => {
    const bytes = Buffer.concat([randomBytes(1 << 20), randomBytes(17)]);
    const copy = Buffer.from(bytes);
    const h = await pool.hashPack(bytes);
    expect(h.id).toBe(createHash('sha256').update(copy).digest('hex'));
    expect(h.bytes.equals(copy)).toBe(true);
  });

  it('hashes a pack built at the start of a larger buffer (PackBuilder in a reused buffer) and hands back that buffer', async () => {
    const big = Buffer.allocUnsafeSlow(1 << 20);
    randomFillSync(big);
    const pack = big.subarray(0, 300_000);
    const copy = Buffer.from(pack);
    const h = await pool.hashPack(pack);
    expect(h.id).toBe(createHash('sha256').update(copy).digest('hex'));
    expect(h.bytes.equals(copy)).toBe(true);
    expect(h.bytes.buffer.byteLength).toBe(1 << 20); // not a copy: the whole buffer went and came back
  });

  it('hashes a pack that is a view into a larger buffer', async () => {
    const big = randomBytes(4096);
    const view = big.subarray(100, 3000);
    const h = await pool.hashPack(view);
    expect(h.id).toBe(createHash('sha256').update(big.subarray(100, 3000)).digest('hex'));
  });

  it('runs many jobs at once and keeps each result with its job', async () => {
    const chunks = Array.from({ length: 64 }, (_, i) => randomBytes(1000 + i * 997));
    const out = await Promise.all(chunks.map((c) => pool.seal(c)));
    out.forEach((s, i) => expect(openBlob(keys, s.id, s.sealed!).equals(chunks[i]!)).toBe(true));
  });

  it('compresses many chunks of different sizes at once, each into its own sealed blob', async () => {
    // a worker compresses into a scratch buffer it keeps: growing, shrinking and reused while
    // the results travel back
    const sizes = [2_000_000, 70_000, 1_200_000, 150_000, 3_000_000, 90_000, 500_000, 2_500_000];
    const chunks = sizes.map((n, i) => Buffer.from(`chunk ${i}: ${randomBytes(8).toString('hex')} `.repeat(Math.ceil(n / 30))).subarray(0, n));
    const out = await Promise.all([...chunks, ...chunks.slice().reverse()].map((c) => pool.seal(c)));
    out.forEach((s, i) => {
      const plain = i < chunks.length ? chunks[i]! : chunks[2 * chunks.length - 1 - i]!;
      expect(open(keys.enc, s.sealed!, s.id)[0]).toBe(1);
      expect(openBlob(keys, s.id, s.sealed!, plain.length).equals(plain)).toBe(true);
    });
  });

  // A buffer that moves to a worker is detached here (byteLength 0): that is how these tests see
  // which buffer a chunk went out in.
  it('reuses a released buffer for a later chunk, which then seals right over the old bytes', async () => {
    const p = new SealPool(keys, { workers: 1 });
    try {
      const big = randomBytes(1_500_000);
      const first = await p.seal(big);
      expect(openBlob(keys, first.id, first.sealed!, big.length).equals(big)).toBe(true);
      let released = first.sealed!.buffer;
      const capacity = released.byteLength;
      p.release(first.sealed!);
      // smaller and compressible (encrypted out of the worker's zstd scratch), then raw (in place)
      for (const plain of [text, randomBytes(400_000)]) {
        const s = await p.seal(plain);
        expect(released.byteLength).toBe(0); // the released buffer went out…
        expect(s.sealed!.buffer.byteLength).toBe(capacity); // …and came back with this chunk
        expect(openBlob(keys, s.id, s.sealed!, plain.length).equals(plain)).toBe(true);
        released = s.sealed!.buffer;
        p.release(s.sealed!);
      }
      // a chunk larger than every free buffer gets a new one; the free one stays
      const larger = randomBytes(3_000_000);
      const s = await p.seal(larger);
      expect(released.byteLength).toBe(capacity);
      expect(s.sealed!.buffer.byteLength).toBeGreaterThanOrEqual(larger.length);
      expect(openBlob(keys, s.id, s.sealed!, larger.length).equals(larger)).toBe(true);
    } finally {
      await p.close();
    }
  });

  it('keeps no more released bytes than it is allowed', async () => {
    const p = new SealPool(keys, { workers: 1, keepBytes: 3 * 1024 * 1024 });
    try {
      const a = await p.seal(randomBytes(100_000));
      const b = await p.seal(randomBytes(100_000));
      p.release(a.sealed!);
      p.release(b.sealed!); // over the 3 MiB kept: dropped
      await p.seal(randomBytes(100_000));
      await p.seal(randomBytes(100_000));
      expect(a.sealed!.buffer.byteLength).toBe(0); // reused
      expect(b.sealed!.buffer.byteLength).toBeGreaterThan(0); // never sent again
    } finally {
      await p.close();
    }
  });

  it('hands back, unsealed, a chunk whose id was marked known, and seals the others', async () => {
    const p = new SealPool(keys, { workers: 2 });
    try {
      const stored = randomBytes(200_000);
      const fresh = randomBytes(200_000);
      p.markKnown(blobId(keys.id, stored));
      const [a, b] = await Promise.all([p.seal(stored), p.seal(fresh)]);
      expect(a.sealed).toBeUndefined();
      expect(a.id.equals(blobId(keys.id, stored))).toBe(true);
      expect(a.plain!.equals(stored)).toBe(true); // for the caller to seal itself should its index disagree
      expect(b.plain).toBeUndefined();
      expect(openBlob(keys, b.id, b.sealed!, fresh.length).equals(fresh)).toBe(true);
    } finally {
      await p.close();
    }
  });

  it('keeps every known id through the growth of its table; only the first 4 bytes of an id are compared', async () => {
    const p = new SealPool(keys, { workers: 2 });
    try {
      const chunks = Array.from({ length: 40 }, () => randomBytes(70_000));
      const ids = chunks.map((c) => blobId(keys.id, c));
      // 10,000 other ids first: the table (4,096 slots to start with) grows several times
      for (let i = 0; i < 10_000; i++) p.markKnown(randomBytes(32));
      for (const id of ids.slice(0, 20)) p.markKnown(id);
      // a different id with the same first 4 bytes as chunk 20: a fingerprint match, so unsealed too
      p.markKnown(Buffer.concat([ids[20]!.subarray(0, 4), randomBytes(28)]));
      const out = await Promise.all(chunks.map((c) => p.seal(c)));
      expect(out.map((r) => r.sealed === undefined)).toEqual(ids.map((_, i) => i <= 20));
      out.forEach((r, i) => expect(r.id.equals(ids[i]!)).toBe(true));
    } finally {
      await p.close();
    }
  });

  it('fails jobs after close', async () => {
    const p = new SealPool(keys, { workers: 1 });
    await p.close();
    await expect(p.seal(Buffer.from('x'))).rejects.toThrow(/closed/);
  });
});
