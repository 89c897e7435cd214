/**
 * Packer: chunks stored before are recognised by the seal workers from their id and never
 * compressed or encrypted again (a changed large file comes back mostly in old chunks), and a
 * fingerprint that only looks known (another blob's first 4 bytes) still gets its chunk stored.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Packer } from '../../agent/backup/packer.js';
import { BlobIndex } from '../../common/repo/blob-index.js';
import { encodedEntryCount } from '../../common/repo/pack.js';
import { Repository } from '../../common/repo/repository.js';
import { MemoryStore } from '../../common/storage/memory-store.js';

const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };

async function store(packer: Packer, chunks: Buffer[]): Promise<Array<{ id: string; pack: string }>> {
  const results = [];
  for (const c of chunks) results.push((await packer.submit(c)).result);
  const refs = await Promise.all(results);
  await packer.flush();
  return refs.map((r) => ({ id: r.id, pack: packer.resolve(r.ref) }));
}

describe('Packer with seal workers', () => {
  it('does not seal again chunks stored before, and still stores one whose id only shares a fingerprint', async () => {
    const repo = await Repository.init(new MemoryStore(), { passphrase: 'p', lock });
    const host = repo.host('h');
    const index = new BlobIndex();
    const old = Array.from({ length: 24 }, () => randomBytes(100_000)); // over the 64 KiB the main thread seals itself
    const first = new Packer(host, index, { lock, sealWorkers: 2, inlineBytes: 0 });
    const before = await store(first, old);
    await first.close();
    expect(first.unsealedBytes).toBe(0);

    // a second backup with the same index: the old chunks again, new ones, and a new one whose
    // id's first 4 bytes are those of a blob in the index (a fingerprint collision)
    const fresh = Array.from({ length: 6 }, () => randomBytes(100_000));
    const lookalike = host.blobIdOf(fresh[0]!);
    const fake = Buffer.concat([lookalike.subarray(0, 4), randomBytes(28)]);
    index.addPack('f'.repeat(64), [{ type: 'data', id: fake, offset: 0, length: 100, rawLength: 100 }]);
    const second = new Packer(host, index, { lock, sealWorkers: 2, inlineBytes: 0 });
    const after = await store(second, [...old, ...fresh]);
    await second.close();

    expect(second.unsealedBytes).toBe(old.length * 100_000);
    expect(after.slice(0, old.length)).toEqual(before); // the same blobs, in the same packs
    expect(second.uploaded.reduce((n, p) => n + encodedEntryCount(p.entries), 0)).toBe(fresh.length); // only the new ones stored
    // every new chunk, the lookalike included, reads back from its pack
    for (const [i, r] of after.slice(old.length).entries()) {
      const loc = index.get(r.id)!;
      expect(loc.pack).toBe(r.pack);
      expect((await host.loadBlob(r.id, loc)).equals(fresh[i]!)).toBe(true);
    }
  });
});
