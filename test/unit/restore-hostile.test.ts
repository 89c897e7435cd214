/**
 * Hostile repositories at restore time: names that try to escape the target, a root path with
 * `..`, a symlink planted in the target, a pack with flipped bits, a manifest naming a pack that
 * does not exist, a damaged index. Each is refused or reported with the paths it affects, and
 * nothing is ever written outside the restore target.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../agent/backup/backup.js';
import { MemoryTreeCache } from '../../agent/backup/tree-cache.js';
import { restore } from '../../agent/restore/restore.js';
import { BlobIndex } from '../../common/repo/blob-index.js';
import { layout } from '../../common/repo/layout.js';
import { PackBuilder, sealBlob } from '../../common/repo/pack.js';
import { Repository } from '../../common/repo/repository.js';
import type { SnapshotManifest } from '../../common/repo/snapshot.js';
import type { TreeNode } from '../../common/repo/tree.js';
import { MemoryStore } from '../../common/storage/memory-store.js';

const base = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-hostile-restore-'));
afterAll(() => fs.rm(base, { recursive: true, force: true }));
let tmp = base;
const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };

async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fs.readdir(dir, { withFileTypes: true })) {
    out.push(path.join(dir, d.name));
    if (d.isDirectory()) out.push(...(await listAll(path.join(dir, d.name))));
  }
  return out;
}

/** A snapshot whose root tree holds the given nodes, each file with content "x". */
async function forged(names: Array<Partial<TreeNode> & { name: string }>, rootPath = '/data') {
  const store = new MemoryStore();
  const repo = await Repository.init(store, { passphrase: 'pw', lock });
  const host = repo.host('evil');
  const pb = new PackBuilder();
  const content = Buffer.from('x');
  const cid = host.blobIdOf(content);
  pb.add('data', cid, sealBlob(host.keys, cid, content), 1);
  const nodes: TreeNode[] = names.map((n) => ({ type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: '1700000000000000000', size: 1, content: [cid.toString('hex')], ...n }) as TreeNode);
  const tree = host.encodeTreeBlob({ nodes });
  pb.add('tree', tree.id, sealBlob(host.keys, tree.id, tree.plain), tree.plain.length);
  const pack = pb.finish(host.keys);
  await host.savePack(pack, lock);
  const index = new BlobIndex();
  index.addPack(pack.id, pack.entries);
  const manifest: SnapshotManifest = {
    version: 1, hostId: 'evil', hostname: 'evil', roots: [{ path: rootPath, tree: tree.id.toString('hex') }], startedAt: 0, finishedAt: 0,
    expiresAt: lock.retainUntil, lock, packs: [pack.id], indexes: [],
    stats: { files: 1, dirs: 1, symlinks: 0, bytes: 1, filesRead: 1, bytesUploaded: 1, packsWritten: 1, skipped: 0 },
  };
  return { host, index, manifest, store, pack };
}

describe.each([{ workers: 0 }, { workers: 2 }])('restore refuses hostile snapshots (worker threads: $workers)', ({ workers }) => {
  beforeAll(async () => {
    tmp = path.join(base, `w${workers}`);
    await fs.mkdir(tmp);
  });

  it('names with .., /, NUL, empty or over 255 bytes are refused; nothing lands outside the target', async () => {
    const { host, index, manifest } = await forged([
      { name: '..' }, { name: '../escape' }, { name: '/abs' }, { name: 'a\0b' }, { name: '' }, { name: '.' }, { name: 'x'.repeat(256) }, { name: 'fine.txt' },
    ]);
    const target = path.join(tmp, 't1', 'target');
    await fs.mkdir(target, { recursive: true });
    const r = await restore({ host, index, manifest, target, workers });
    expect(r.files).toBe(1);
    expect(r.errors.filter((e) => /unsafe name/.test(e.reason))).toHaveLength(7);
    expect(await listAll(path.join(tmp, 't1'))).toEqual([target, path.join(target, 'data'), path.join(target, 'data', 'fine.txt')]);
  });

  it('a root path with .. is refused before anything is written', async () => {
    const { host, index, manifest } = await forged([{ name: 'f' }], '/data/../../etc');
    const target = path.join(tmp, 't2');
    await expect(restore({ host, index, manifest, target, workers })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    expect(await listAll(target)).toEqual([]);
  });

  it('does not write through a symlink planted in the target', async () => {
    const { host, index, manifest } = await forged([{ name: 'passwd' }]);
    const target = path.join(tmp, 't3');
    const outside = path.join(tmp, 'outside');
    await fs.mkdir(outside, { recursive: true });
    await fs.mkdir(target, { recursive: true });
    await fs.symlink(outside, path.join(target, 'data'));
    const r = await restore({ host, index, manifest, target, workers });
    expect(r.files).toBe(0);
    expect(r.errors[0]!.reason).toMatch(/symlink is in the way/);
    expect(await fs.readdir(outside)).toEqual([]);
  });

  it('a symlink in the snapshot is created last and never followed by a later write', async () => {
    const { host, index, manifest } = await forged([{ name: 'link', type: 'symlink', target: path.join(tmp, 'outside2'), content: undefined, size: undefined }, { name: 'z-file' }]);
    await fs.mkdir(path.join(tmp, 'outside2'), { recursive: true });
    const target = path.join(tmp, 't4');
    const r = await restore({ host, index, manifest, target, workers });
    expect(r.errors).toEqual([]);
    expect(await fs.readlink(path.join(target, 'data', 'link'))).toBe(path.join(tmp, 'outside2'));
    expect(await fs.readdir(path.join(tmp, 'outside2'))).toEqual([]);
  });

  it('a pack with flipped bits and no genuine version: the affected paths are reported, the rest restored', async () => {
    const store = new MemoryStore();
    const repo = await Repository.init(store, { passphrase: 'pw', lock, config: { chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 }, packSize: 64 * 1024 } });
    const host = repo.host('h');
    const src = path.join(tmp, 'src5');
    await fs.mkdir(src);
    for (let i = 0; i < 8; i++) await fs.writeFile(path.join(src, `f${i}`), randomBytes(40_000));
    const { index } = await host.loadIndex();
    const b = await backup({ host, index, roots: [src], hostname: 'h', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache() });
    // a reader that sees a corrupted copy of one data pack in every version (a damaged disk, say)
    // a pack with file data only (the trees sit in the last pack, written after the files)
    const treePack = index.get(b.manifest.roots[0]!.tree)!.pack;
    const victim = b.manifest.packs.find((p) => p !== treePack)!;
    const key = layout.pack('h', victim);
    const orig = await store.get(key);
    const bad = Buffer.from(orig);
    for (let i = 100; i < bad.length - 200; i += 997) bad[i] = bad[i]! ^ 0xff;
    const corrupt = Object.create(store) as MemoryStore;
    corrupt.get = async (k, o) => {
      const bytes = await store.get(k, o);
      if (k !== key) return bytes;
      const off = o?.range?.offset ?? 0;
      return Uint8Array.from(bad.subarray(off, off + bytes.length));
    };
    const { HostRepository } = await import('../../common/repo/repository.js');
    const reader = new HostRepository(corrupt, host.config, host.keys);
    const r = await restore({ host: reader, index, manifest: b.manifest, target: path.join(tmp, 't5'), workers });
    expect(r.errors.length).toBeGreaterThan(0);
    expect(r.errors.every((e) => e.reason.includes(victim) && /CHECKSUM|genuine|authentication/i.test(e.reason))).toBe(true);
    expect(r.files + r.errors.length).toBe(8);
  });

  it('a manifest naming a pack that does not exist: reported with the paths it affects', async () => {
    const { host, index, manifest, store, pack } = await forged([{ name: 'a' }, { name: 'b' }]);
    // the data blob is said to live in a pack the bucket does not have: restore reports both files
    void index;
    const missing = 'ab'.repeat(32);
    const idx2 = new BlobIndex();
    const entries = pack.entries.map((e) => ({ ...e }));
    idx2.addPack(pack.id, entries.filter((e) => e.type === 'tree'));
    idx2.addPack(missing, entries.filter((e) => e.type === 'data'));
    expect(await store.head(layout.pack('evil', missing)).catch((e: { code?: string }) => e.code)).toBe('NOT_FOUND');
    const r = await restore({ host, index: idx2, manifest: { ...manifest, packs: [pack.id, missing] }, target: path.join(tmp, 't6'), workers });
    expect(r.files).toBe(0);
    expect(r.errors.map((e) => path.basename(e.path)).sort()).toEqual(['a', 'b']);
    expect(r.errors.every((e) => e.reason.includes(missing))).toBe(true);
  });

  it('a truncated index is reported as damaged and rebuilt from the packs', async () => {
    const { host, store, pack } = await forged([{ name: 'f' }]);
    const saved = await host.saveIndex([{ id: pack.id, entries: pack.entries }], lock);
    const bytes = await store.get(saved.key);
    await store.put(saved.key, bytes.subarray(0, bytes.length / 2)); // truncated copy over the only index
    await store.delete(saved.key, { versionId: (await store.head(saved.key)).versionId }); // attacker removes its own junk
    const loaded = await host.loadIndex();
    expect(loaded.index.has(pack.entries[0]!.id.toString('hex'))).toBe(true); // genuine version still found
    // an index with no genuine version at all
    const store2 = new MemoryStore();
    await store2.put(saved.key, bytes.subarray(0, bytes.length / 2));
    const { HostRepository } = await import('../../common/repo/repository.js');
    const h2 = new HostRepository(store2, host.config, host.keys);
    const l2 = await h2.loadIndex();
    expect(l2.damaged).toEqual([saved.key]);
    expect(l2.index.size).toBe(0);
  });

  it('loads many index objects (several at once) and skips only the damaged ones', async () => {
    const { host } = await forged([{ name: 'f' }]);
    const { HostRepository } = await import('../../common/repo/repository.js');
    const { encodeIndex } = await import('../../common/repo/blob-index.js');
    const { contentId } = await import('../../common/repo/crypto.js');
    const store = new MemoryStore();
    const h = new HostRepository(store, host.config, host.keys);
    // 30 index objects of one made-up pack each; one of them has only a garbage version
    const packs = Array.from({ length: 30 }, (_, i) => ({
      id: contentId(Buffer.from(`pack ${i}`)),
      entries: [{ type: 'data' as const, id: Buffer.from(contentId(Buffer.from(`blob ${i}`)), 'hex'), offset: 0, length: 100 + i, rawLength: 90 }],
    }));
    const objects = packs.map((p) => encodeIndex(h.keys, [p])); // sealed: a fresh nonce each time
    const keys = objects.map((o) => layout.index('evil', contentId(o)));
    const bad = [...keys].sort()[13]!;
    for (const [i, o] of objects.entries()) await store.put(keys[i]!, keys[i] === bad ? Buffer.from('garbage') : o);
    const badPack = packs[keys.indexOf(bad)]!;
    const loaded = await h.loadIndex();
    expect(loaded.damaged).toEqual([bad]);
    expect(loaded.index.size).toBe(29);
    for (const p of packs) expect(loaded.index.has(p.entries[0]!.id.toString('hex'))).toBe(p !== badPack);
    // (not packs[0]: the damaged object is picked by its random name, so 1 time in 30 it is pack 0's)
    const good = packs.findIndex((p) => p !== badPack);
    expect(loaded.index.get(packs[good]!.entries[0]!.id.toString('hex'))).toMatchObject({ pack: packs[good]!.id, length: 100 + good });
  });
});
