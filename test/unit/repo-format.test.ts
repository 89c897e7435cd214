import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { BlobIndex, decodeIndex, encodeIndex } from '../../common/repo/blob-index.js';
import { blobId } from '../../common/repo/crypto.js';
import { deriveHostKeys } from '../../common/repo/keys.js';
import { encodeEntries, openBlob, PackBuilder, type PackEntry, parsePack, sealBlobParts } from '../../common/repo/pack.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { repoTamperSuite } from '../conformance/repo-tamper-suite.js';

repoTamperSuite('MemoryStore', { lockedStore: async () => new MemoryStore() });

describe('PackBuilder', () => {
  const keys = deriveHostKeys(randomBytes(32), 'h');
  // small and large interleaved, past the 1 MiB a builder starts with (it grows, copying what it has)
  const sizes = [10, 70_000, ...Array.from({ length: 300 }, (_, i) => 1000 + ((i * 7919) % 30_000)), 200_000, 5, 65_535, 65_536, 0, 3_000_000];
  const plains = sizes.map((n) => randomBytes(n));

  function build(b: PackBuilder): { bytes: Buffer; entries: PackEntry[] } {
    for (const p of plains) {
      const id = blobId(keys.id, p);
      b.add('data', id, sealBlobParts(keys, id, p), p.length);
    }
    const out = b.finishBytes(keys);
    expect(out.bytes.length).toBeGreaterThan(b.size);
    expect(parsePack(keys, out.bytes)).toEqual(out.entries);
    out.entries.forEach((e, i) => {
      expect(e.offset).toBe(i === 0 ? 0 : out.entries[i - 1]!.offset + out.entries[i - 1]!.length);
      expect(openBlob(keys, e.id, out.bytes.subarray(e.offset, e.offset + e.length), e.rawLength).equals(plains[i]!)).toBe(true);
    });
    return out;
  }

  it('lays blobs of every size out in order, each readable at its offset', () => {
    build(new PackBuilder());
  });

  it('builds in the buffer it is given, from its start, whatever was in it', () => {
    const into = Buffer.alloc(16 * 1024 * 1024, 0xa5);
    const { bytes } = build(new PackBuilder(into));
    expect(bytes.buffer).toBe(into.buffer);
    expect(bytes.byteOffset).toBe(into.byteOffset);
  });

  it('moves to a larger buffer when the pack outgrows the one it was given', () => {
    const into = Buffer.alloc(100_000);
    const { bytes } = build(new PackBuilder(into));
    expect(bytes.buffer).not.toBe(into.buffer);
  });
});

describe('index objects', () => {
  it('encode and decode 200,000 entries across many packs (a first backup of many small files)', () => {
    const keys = deriveHostKeys(randomBytes(32), 'h');
    const packs = Array.from({ length: 50 }, () => ({
      id: randomBytes(32).toString('hex'),
      entries: Array.from({ length: 4000 }, (_, i) => ({ type: (i % 7 === 0 ? 'tree' : 'data') as 'tree' | 'data', id: randomBytes(32), offset: i * 100, length: 100, rawLength: 90 + (i % 10) })),
    }));
    const back = decodeIndex(keys, encodeIndex(keys, packs));
    expect(back.map((p) => p.id)).toEqual(packs.map((p) => p.id));
    expect(back.reduce((n, p) => n + p.entries.length, 0)).toBe(200_000);
    expect(back[17]!.entries[1234]).toEqual(packs[17]!.entries[1234]);
    // the same packs with their entries encoded as in their headers (how a backup keeps them)
    const again = decodeIndex(keys, encodeIndex(keys, packs.map((p) => ({ id: p.id, entries: encodeEntries(p.entries) }))));
    expect(again.map((p) => p.id)).toEqual(packs.map((p) => p.id));
    again.forEach((p, i) => expect(encodeEntries(p.entries).equals(encodeEntries(packs[i]!.entries))).toBe(true));
  });
});

describe('BlobIndex', () => {
  const entry = (id: Buffer, i: number): PackEntry => ({ type: i % 5 === 0 ? 'tree' : 'data', id, offset: i * 7, length: 1000 + i, rawLength: 2000 + i });

  it('finds each of 100,000 blobs in 10 packs, and nothing else', () => {
    const idx = new BlobIndex();
    const packs = Array.from({ length: 10 }, (_, p) => ({ id: `pack-${p}`, entries: Array.from({ length: 10_000 }, (_, i) => entry(randomBytes(32), p * 10_000 + i)) }));
    for (const p of packs) idx.addPack(p.id, p.entries);
    expect(idx.size).toBe(100_000);
    expect(idx.packCount).toBe(10);
    expect([...idx.packs()]).toEqual(packs.map((p) => p.id));
    for (const p of packs) {
      for (const e of p.entries) {
        expect(idx.get(e.id.toString('hex'))).toEqual({ pack: p.id, type: e.type, offset: e.offset, length: e.length, rawLength: e.rawLength });
      }
    }
    for (let i = 0; i < 1000; i++) expect(idx.has(randomBytes(32).toString('hex'))).toBe(false);
  });

  it('answers "unknown" to anything that is not 64 hex digits, without throwing', () => {
    const idx = new BlobIndex();
    const id = randomBytes(32);
    idx.addPack('p', [entry(id, 1)]);
    const hex = id.toString('hex');
    for (const bad of ['', hex.slice(0, 62), hex + '00', hex.slice(0, 63) + 'g', 'zz' + hex.slice(2), hex.toUpperCase().replace(/./, 'Q')]) {
      expect(idx.get(bad)).toBeUndefined();
      expect(idx.has(bad)).toBe(false);
    }
    expect(idx.get(hex.toUpperCase())?.pack).toBe('p'); // hex is hex
  });

  it('forgets the blobs of dropped packs and still finds the others (and a blob added again)', () => {
    const idx = new BlobIndex();
    const ids = Array.from({ length: 3000 }, () => randomBytes(32));
    ids.forEach((id, i) => idx.addPack(`p${i % 3}`, [entry(id, i)]));
    idx.dropPacks(new Set(['p1', 'nope']));
    expect(idx.size).toBe(2000);
    expect([...idx.packs()]).toEqual(['p0', 'p2']);
    expect(idx.hasPack('p1')).toBe(false);
    ids.forEach((id, i) => expect(idx.get(id.toString('hex'))?.pack).toBe(i % 3 === 1 ? undefined : `p${i % 3}`));
    idx.addPack('p3', [entry(ids[1]!, 1), entry(ids[0]!, 0)]);
    expect(idx.get(ids[1]!.toString('hex'))?.pack).toBe('p3');
    expect(idx.get(ids[0]!.toString('hex'))?.pack).toBe('p0');
    expect(idx.size).toBe(2001);
  });

  it('refuses an entry whose id is not 32 bytes', () => {
    expect(() => new BlobIndex().addPack('p', [entry(randomBytes(31), 0)])).toThrow(/32|bytes/);
  });
});

describe('BlobIndex with a blob in two packs', () => {
  const entry = (id: Buffer, offset: number) => ({ type: 'data' as const, id, offset, length: 10, rawLength: 9 });
  const blob = randomBytes(32);
  const other = randomBytes(32);

  it('keeps the first pack without a rank', () => {
    const idx = new BlobIndex();
    idx.addPack('old', [entry(blob, 0), entry(other, 10)]);
    idx.addPack('new', [entry(blob, 50)]);
    expect(idx.get(blob.toString('hex'))?.pack).toBe('old');
  });

  it('moves the blob to the higher-ranked pack (the re-protected copy, locked longer), whatever the order', () => {
    const locks = new Map([['old', 1_000], ['new', 9_000]]);
    for (const order of [['old', 'new'], ['new', 'old']] as const) {
      const idx = new BlobIndex((p) => locks.get(p) ?? 0);
      for (const p of order) idx.addPack(p, p === 'old' ? [entry(blob, 0), entry(other, 10)] : [entry(blob, 50)]);
      expect(idx.get(blob.toString('hex'))).toMatchObject({ pack: 'new', offset: 50 });
      expect(idx.get(other.toString('hex'))?.pack).toBe('old');
      expect(idx.hasPack('old') && idx.hasPack('new')).toBe(true);
    }
  });
});

describe('HostRepository.loadBlobs', () => {
  it('neighbours in a pack come in one ranged GET; a blob the current version garbles comes from its genuine version', async () => {
    const { Repository } = await import('../../common/repo/repository.js');
    const { layout } = await import('../../common/repo/layout.js');
    const { sealBlob } = await import('../../common/repo/pack.js');
    const store = new MemoryStore();
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };
    const repo = await Repository.init(store, { passphrase: 'pw', lock });
    const host = repo.host('h');
    const pb = new PackBuilder();
    const plains = Array.from({ length: 6 }, (_, i) => randomBytes(1000 + i * 700));
    const ids = plains.map((p) => host.blobIdOf(p));
    plains.forEach((p, i) => pb.add('data', ids[i]!, sealBlob(host.keys, ids[i]!, p), p.length));
    const pack = pb.finish(host.keys);
    await host.savePack(pack, lock);
    const index = new BlobIndex();
    index.addPack(pack.id, pack.entries);
    const entries = ids.map((id) => ({ id: id.toString('hex'), loc: index.get(id.toString('hex'))! }));
    let gets = 0;
    const counting = Object.create(store) as MemoryStore;
    counting.get = (k, o) => (gets++, store.get(k, o));
    const tamper: string[] = [];
    const reader = new (await import('../../common/repo/repository.js')).HostRepository(counting, host.config, host.keys, (r) => tamper.push(r.problem));
    const got = await Promise.all(reader.loadBlobs(entries));
    expect(got.map((b) => b.equals(plains[got.indexOf(b)]!))).toEqual(plains.map(() => true));
    expect(gets).toBe(1);
    expect(tamper).toEqual([]);
    // an attacker's new current version of the pack: every blob is refused from it, then read from
    // the locked version that is still there
    const key = layout.pack('h', pack.id);
    await store.put(key, randomBytes(pack.bytes.length));
    gets = 0;
    const again = await Promise.all(reader.loadBlobs(entries));
    again.forEach((b, i) => expect(b.equals(plains[i]!)).toBe(true));
    expect(gets).toBeGreaterThan(1);
    // per blob: the garbled version it was refused from, and the report of the read that recovered
    expect(tamper.length).toBe(2 * plains.length);
    expect(new Set(tamper)).toEqual(new Set(['failed-verification']));
  });
});
