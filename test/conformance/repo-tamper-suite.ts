/**
 * Tamper-proof reads of the repository format, run against MemoryStore (unit) and RGW
 * (integration). The attacker holds a write credential: it can add versions (garbage, truncated
 * copies, forged objects) and delete markers, but cannot remove or alter a locked version.
 * Reads must still return the genuine bytes, or fail with CHECKSUM_MISMATCH when none exists.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { BlobStore } from '../../common/storage/blob-store.js';
import { HostRepository, Repository } from '../../common/repo/repository.js';
import { BlobIndex } from '../../common/repo/blob-index.js';
import { PackBuilder, sealBlob } from '../../common/repo/pack.js';
import { layout } from '../../common/repo/layout.js';
import type { SnapshotManifest } from '../../common/repo/snapshot.js';
import type { TamperReport } from '../../common/repo/verified-read.js';
import { codeOf } from './blob-store-suite.js';

export interface TamperHarness {
  /** A fresh empty store on a locked bucket. */
  lockedStore(): Promise<BlobStore>;
}

const PASS = 'correct horse battery staple';

async function setup(h: TamperHarness) {
  const store = await h.lockedStore();
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + 120_000 };
  const repo = await Repository.init(store, { passphrase: PASS, lock });
  const host = repo.host('host-a');
  const blobs = [randomBytes(20_000), Buffer.from('hello '.repeat(5000)), randomBytes(7)];
  const pb = new PackBuilder();
  const ids = blobs.map((b) => {
    const id = host.blobIdOf(b);
    pb.add('data', id, sealBlob(host.keys, id, b), b.length);
    return id.toString('hex');
  });
  const pack = pb.finish(host.keys);
  await host.savePack(pack, lock);
  const idx = await host.saveIndex([{ id: pack.id, entries: pack.entries }], lock);
  return { store, lock, repo, host, blobs, ids, pack, idx };
}

function manifest(hostId: string, pack: string, lock: { mode: 'COMPLIANCE'; retainUntil: number }): SnapshotManifest {
  return {
    version: 1,
    hostId,
    hostname: hostId,
    roots: [{ path: '/data', tree: 'ab'.repeat(32) }],
    startedAt: Date.now(),
    finishedAt: Date.now(),
    expiresAt: lock.retainUntil,
    lock,
    packs: [pack],
    indexes: [],
    stats: { files: 1, dirs: 0, symlinks: 0, bytes: 1, filesRead: 1, bytesUploaded: 1, packsWritten: 1, skipped: 0 },
  };
}

export function repoTamperSuite(name: string, h: TamperHarness): void {
  describe(`repository format, tamper-proof reads: ${name}`, () => {
    it('opens with the passphrase, refuses a wrong one, reads what it wrote', async () => {
      const { store, host, blobs, ids } = await setup(h);
      expect(await codeOf(Repository.open(store, { passphrase: 'wrong' }))).toBe('WRONG_KEY');
      const again = await Repository.open(store, { passphrase: PASS });
      const { index, damaged } = await again.host('host-a').loadIndex();
      expect(damaged).toEqual([]);
      for (let i = 0; i < blobs.length; i++) {
        expect((await host.loadBlob(ids[i]!, index.get(ids[i]!)!)).equals(blobs[i]!)).toBe(true);
      }
    });

    it('reads a pack hidden behind a delete marker', async () => {
      const { store, host, blobs, ids, pack } = await setup(h);
      await store.delete(layout.pack('host-a', pack.id));
      const reports: TamperReport[] = [];
      const { index } = await host.loadIndex();
      const hr = new HostRepository(store, host.config, host.keys, (r) => reports.push(r));
      expect((await hr.loadBlob(ids[0]!, index.get(ids[0]!)!)).equals(blobs[0]!)).toBe(true);
      expect(reports.map((r) => r.problem)).toContain('hidden-by-delete-marker');
    });

    it('reads the genuine pack under a garbage overwrite and under a truncated copy', async () => {
      const { store, host, blobs, ids, pack } = await setup(h);
      const key = layout.pack('host-a', pack.id);
      await store.put(key, randomBytes(pack.bytes.length));
      const { index } = await host.loadIndex();
      expect((await host.loadBlob(ids[1]!, index.get(ids[1]!)!)).equals(blobs[1]!)).toBe(true);
      await store.put(key, pack.bytes.subarray(0, 1000));
      expect((await host.loadBlob(ids[0]!, index.get(ids[0]!)!)).equals(blobs[0]!)).toBe(true);
      expect((await host.readPackHeader(pack.id)).length).toBe(3);
    });

    it('fails with CHECKSUM_MISMATCH when no genuine version exists', async () => {
      const store = await h.lockedStore();
      const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + 120_000 };
      const repo = await Repository.init(store, { passphrase: PASS, lock });
      const host = repo.host('host-a');
      const b = randomBytes(5000);
      const id = host.blobIdOf(b);
      const pb = new PackBuilder();
      pb.add('data', id, sealBlob(host.keys, id, b), b.length);
      const pack = pb.finish(host.keys);
      // the attacker writes a pack with a flipped bit under the genuine pack's name, which never existed
      const bad = Buffer.from(pack.bytes);
      bad[100] = bad[100]! ^ 0x01;
      await store.put(layout.pack('host-a', pack.id), bad);
      expect(await codeOf(host.readPackHeader(pack.id))).toBe('CHECKSUM_MISMATCH');
      expect(await codeOf(host.loadBlob(id.toString('hex'), { pack: pack.id, type: 'data', offset: 0, length: pack.entries[0]!.length, rawLength: b.length }))).toBe('CHECKSUM_MISMATCH');
    });

    it('finds the genuine config and key file under garbage and forged overwrites', async () => {
      const { store, repo } = await setup(h);
      await store.put(layout.config, Buffer.from('{"config":{"format":"bulwark-repo","version":1},"mac":"00"}'));
      await store.delete(repo.foundation.find((f) => f.key.startsWith('keys/'))!.key);
      const again = await Repository.open(store, { passphrase: PASS });
      expect(again.config.repoId).toBe(repo.config.repoId);
    });

    it('rebuilds a lost index from the packs themselves', async () => {
      const { store, host, ids, pack, idx } = await setup(h);
      await store.put(idx.key, randomBytes(300)); // garbage over the only index... and a marker on top
      await store.delete(idx.key);
      const { index } = await host.loadIndex(); // found the genuine version anyway
      expect(index.has(ids[0]!)).toBe(true);
      const fresh = new BlobIndex();
      expect(await host.completeIndex(fresh, [pack.id])).toBe(1);
      expect(ids.every((id) => fresh.has(id))).toBe(true);
    });

    it('reads a snapshot manifest under garbage, and ignores a forged one', async () => {
      const { store, host, lock, pack } = await setup(h);
      const saved = await host.saveSnapshot(manifest('host-a', pack.id, lock));
      await store.put(saved.key, randomBytes(200));
      expect((await host.loadSnapshot(saved.id)).packs).toEqual([pack.id]);
      // a forged manifest under a made-up id, encrypted with another host's key
      const other = (await Repository.open(store, { passphrase: PASS })).host('host-b');
      const forged = await other.saveSnapshot(manifest('host-b', pack.id, lock));
      await store.put(layout.snapshot('host-a', forged.id), await store.get(forged.key));
      const all = await host.loadSnapshots();
      expect(all.map((s) => s.id)).toEqual([saved.id]);
    });
  });
}
