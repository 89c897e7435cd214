import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { BlobIndex, decodeIndex, encodeIndex } from '../../common/repo/blob-index.js';
import { blobId } from '../../common/repo/crypto.js';
import { deriveHostKeys } from '../../common/repo/keys.js';
import { openBlob, PackBuilder, parsePack, sealBlobParts } from '../../common/repo/pack.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { repoTamperSuite } from '../conformance/repo-tamper-suite.js';

repoTamperSuite('MemoryStore', { lockedStore: async () => new MemoryStore() });

describe('PackBuilder', () => {
  it('lays small blobs (copied into slabs) and large ones (kept as pieces) out in order, each readable at its offset', () => {
    const keys = deriveHostKeys(randomBytes(32), 'h');
    // small and large interleaved, enough small ones to fill several 1 MiB slabs
    const sizes = [10, 70_000, ...Array.from({ length: 300 }, (_, i) => 1000 + ((i * 7919) % 30_000)), 200_000, 5, 65_535, 65_536, 0];
    const plains = sizes.map((n) => randomBytes(n));
    const b = new PackBuilder();
    for (const p of plains) {
      const id = blobId(keys.id, p);
      b.add('data', id, sealBlobParts(keys, id, p), p.length);
    }
    const { bytes, entries } = b.finishBytes(keys);
    expect(bytes.length).toBeGreaterThan(b.size);
    expect(parsePack(keys, bytes)).toEqual(entries);
    entries.forEach((e, i) => {
      expect(e.offset).toBe(i === 0 ? 0 : entries[i - 1]!.offset + entries[i - 1]!.length);
      expect(openBlob(keys, e.id, bytes.subarray(e.offset, e.offset + e.length), e.rawLength).equals(plains[i]!)).toBe(true);
    });
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
