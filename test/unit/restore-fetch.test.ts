/**
 * How the restore fetches: packs fetched while the plan still walks (a later file needing a blob
 * of a pack already on its way gets its own GET), and ranges fetched by the worker threads
 * themselves through the store's `directRead` URLs, with every way such a fetch can go wrong
 * falling back to the store (and its tamper-proof read). The worker path is served here by a
 * local HTTP server over a MemoryStore (test/helpers/http-store.ts); against RGW's presigned URLs
 * it runs in the integration suite.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../agent/backup/backup.js';
import { MemoryTreeCache } from '../../agent/backup/tree-cache.js';
import { restore } from '../../agent/restore/restore.js';
import { layout } from '../../common/repo/layout.js';
import { HostRepository, Repository } from '../../common/repo/repository.js';
import type { TamperReport } from '../../common/repo/verified-read.js';
import type { BlobStore } from '../../common/storage/blob-store.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { compareTrees, makeHostileTree } from '../helpers/fs-tree.js';
import { type HttpStore, serveOverHttp } from '../helpers/http-store.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-restore-fetch-'));
const servers: HttpStore[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
  await fs.rm(tmp, { recursive: true, force: true });
});
const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };

/**
 * A backed-up tree of many small packs: 12 directories of 10 files (4-40 KB), the hostile tree,
 * and one 90 KB content stored twice, as the first file and as the last one (one blob, used at
 * both ends of the walk).
 */
async function world(name: string) {
  const store = new MemoryStore();
  const repo = await Repository.init(store, { passphrase: 'pw', lock, config: { chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 }, packSize: 32 * 1024 } });
  const host = repo.host('h');
  const src = path.join(tmp, name);
  await makeHostileTree(path.join(src, 'm-hostile'));
  const twice = randomBytes(90_000);
  await fs.writeFile(path.join(src, 'a-first.bin'), twice);
  for (let d = 0; d < 12; d++) {
    await fs.mkdir(path.join(src, `d${d}`));
    for (let f = 0; f < 10; f++) await fs.writeFile(path.join(src, `d${d}`, `f${f}`), randomBytes(4000 + ((d * 10 + f) % 9) * 4000));
  }
  await fs.writeFile(path.join(src, 'z-last.bin'), twice);
  const { index } = await host.loadIndex();
  const b = await backup({ host, index, roots: [src], hostname: 'h', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache() });
  expect(b.skipped).toEqual([]);
  expect(b.manifest.packs.length).toBeGreaterThan(20);
  return { store, host, src, manifest: b.manifest };
}

/** The same repository read through another store (the HTTP-served one), reporting tampering. */
function through(host: HostRepository, store: BlobStore, tamper: TamperReport[] = []): HostRepository {
  return new HostRepository(store, host.config, host.keys, (r) => tamper.push(r));
}

describe('restore: fetching while the plan walks', () => {
  it.each([{ workers: 0 }, { workers: 2 }])('packs fetched mid-walk, a blob needed again after its pack left: identical (workers $workers)', async ({ workers }) => {
    const w = await world(`walk-${workers}`);
    const index = (await w.host.loadIndex()).index;
    const whole = await restore({ host: w.host, index, manifest: w.manifest, target: path.join(tmp, `walk-${workers}-whole`), workers, directReads: false, fetchIdleAfter: Number.MAX_SAFE_INTEGER });
    const streamed = await restore({ host: w.host, index, manifest: w.manifest, target: path.join(tmp, `walk-${workers}-streamed`), workers, directReads: false, fetchIdleAfter: 2 });
    for (const [r, dir] of [[whole, 'whole'], [streamed, 'streamed']] as const) {
      expect(r.errors).toEqual([]);
      expect(await compareTrees(w.src, path.join(tmp, `walk-${workers}-${dir}`, w.src))).toEqual([]);
    }
    // fetched pack by pack as the walk left them: more, smaller ranges than one pass at the end,
    // and the blob of a-first.bin fetched twice (z-last.bin, at the other end of the walk)
    expect(streamed.ranges.viaStore).toBeGreaterThan(whole.ranges.viaStore);
    expect(streamed.ranges.direct + whole.ranges.direct).toBe(0);
  });
});

describe('restore: the workers fetch ranges themselves', () => {
  it('through directRead URLs: every range on the workers, identical', async () => {
    const w = await world('direct');
    const http = await serveOverHttp(w.store);
    servers.push(http);
    const tamper: TamperReport[] = [];
    const host = through(w.host, http.store, tamper);
    const r = await restore({ host, index: (await host.loadIndex()).index, manifest: w.manifest, target: path.join(tmp, 'direct-out'), workers: 2, fetchIdleAfter: 8 });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, path.join(tmp, 'direct-out', w.src))).toEqual([]);
    expect(r.ranges.direct).toBeGreaterThan(20);
    expect(r.ranges.directFailed + r.ranges.viaStore).toBe(0);
    expect(http.gets).toBe(r.ranges.direct);
    expect(tamper).toEqual([]);
  });

  it('a pack overwritten with garbage: the workers refuse its bytes and the tamper-proof read finds the genuine version', async () => {
    const w = await world('garbage');
    const victim = w.manifest.packs[3]!;
    const key = layout.pack('h', victim);
    const size = (await w.store.get(key)).length;
    await w.store.put(key, randomBytes(size)); // a new current version; the locked one stays
    const http = await serveOverHttp(w.store);
    servers.push(http);
    const tamper: TamperReport[] = [];
    const host = through(w.host, http.store, tamper);
    const r = await restore({ host, index: (await host.loadIndex()).index, manifest: w.manifest, target: path.join(tmp, 'garbage-out'), workers: 2 });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, path.join(tmp, 'garbage-out', w.src))).toEqual([]);
    expect(r.ranges.directFailed).toBe(0); // fetched fine: the bytes were refused, not the request
    expect(tamper.length).toBeGreaterThan(0);
    expect(tamper.every((t) => t.key === key && t.problem === 'failed-verification')).toBe(true);
  });

  it.each([
    { fault: { status: 403 }, what: 'refused (403)' },
    { fault: { status: 503 }, what: 'SlowDown (503)' },
    { fault: 'ignore-range' as const, what: 'the Range header ignored (200, whole object)' },
    { fault: 'cut-short' as const, what: 'a body cut short' },
  ])('every worker fetch $what: the store fetches instead, once the workers gave up, identical', async ({ fault }) => {
    const w = await world(`fault-${typeof fault === 'string' ? fault : fault.status}`);
    const http = await serveOverHttp(w.store);
    servers.push(http);
    http.fault = () => fault;
    const notices: string[] = [];
    const host = through(w.host, http.store);
    const target = path.join(tmp, `fault-out-${typeof fault === 'string' ? fault : fault.status}`);
    const r = await restore({ host, index: (await host.loadIndex()).index, manifest: w.manifest, target, workers: 2, onNotice: (m) => notices.push(m) });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, path.join(target, w.src))).toEqual([]);
    // a few failed (the ones in flight when the third failure in a row stopped the workers
    // fetching), then everything came through the store
    expect(r.ranges.directFailed).toBeGreaterThanOrEqual(3);
    expect(r.ranges.viaStore).toBeGreaterThan(10);
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/could not fetch from the store/);
  });

  it('one pack missing behind the server (404): that range comes through the store, the rest from the workers', async () => {
    const w = await world('one-missing');
    const http = await serveOverHttp(w.store);
    servers.push(http);
    const victim = layout.pack('h', w.manifest.packs[5]!);
    http.fault = (key) => (key.endsWith(victim) ? { status: 404 } : undefined);
    const host = through(w.host, http.store);
    const notices: string[] = [];
    // one range per pack (no mid-walk fetches): the victim fails its data range, and its tree's
    // range when it holds a tree (chunk boundaries, hence packs, differ from run to run) — never
    // the three in a row that would stop the workers fetching
    const r = await restore({ host, index: (await host.loadIndex()).index, manifest: w.manifest, target: path.join(tmp, 'missing-out'), workers: 2, fetchIdleAfter: Number.MAX_SAFE_INTEGER, onNotice: (m) => notices.push(m) });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, path.join(tmp, 'missing-out', w.src))).toEqual([]);
    expect(notices).toEqual([]);
    expect(r.ranges.directFailed).toBeGreaterThan(0);
    expect(r.ranges.directFailed).toBeLessThan(3);
    // a failed data range is fetched again through the store (a failed tree, through the tamper-proof read)
    expect(r.ranges.viaStore).toBeGreaterThan(0);
    expect(r.ranges.viaStore).toBeLessThanOrEqual(r.ranges.directFailed);
    expect(r.ranges.direct).toBeGreaterThan(20);
  });
});

describe('restore: modes of one-blob files written by the workers', () => {
  it('modes the umask would change, set-id bits and no bits at all come back exact (created with the mode or fixed with fchmod)', async () => {
    const store = new MemoryStore();
    const repo = await Repository.init(store, { passphrase: 'pw', lock });
    const host = repo.host('h');
    const src = path.join(tmp, 'modes');
    await fs.mkdir(src);
    const modes = [0o644, 0o600, 0o664, 0o666, 0o777, 0o000, 0o4755, 0o2750, 0o1644];
    for (const m of modes) {
      const p = path.join(src, `m${m.toString(8)}`);
      await fs.writeFile(p, `mode ${m.toString(8)}`);
      await fs.chmod(p, m);
    }
    const { index } = await host.loadIndex();
    const b = await backup({ host, index, roots: [src], hostname: 'h', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache() });
    const target = path.join(tmp, 'modes-out');
    const r = await restore({ host, index: (await host.loadIndex()).index, manifest: b.manifest, target, workers: 2 });
    expect(r.errors).toEqual([]);
    for (const m of modes) expect(((await fs.stat(path.join(target, src, `m${m.toString(8)}`))).mode & 0o7777).toString(8)).toBe(m.toString(8));
    expect(await compareTrees(src, path.join(target, src))).toEqual([]);
  });
});

/** `store` answering every read 30 ms late: a restore of the small world takes long enough to watch or cancel. */
function slowStore(store: BlobStore): BlobStore {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (prop === 'get') return async (...args: Parameters<BlobStore['get']>) => (await new Promise((r) => setTimeout(r, 30)), target.get(...args));
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

describe('restore: staged directories', () => {
  it.each([{ workers: 0 }, { workers: 2 }])('a new directory appears under its real name only when complete, the existing ones get their times after the renames (workers $workers)', async ({ workers }) => {
    const w = await world(`staged-${workers}`);
    const index = (await w.host.loadIndex()).index;
    const target = path.join(tmp, `staged-${workers}-out`);
    // the root and its d0 exist: their files are renamed into place one by one; d1…d11 and
    // m-hostile are new, each staged under a temporary name until the end
    const root = path.join(target, w.src);
    await fs.mkdir(path.join(root, 'd0'), { recursive: true });
    const fresh = ['m-hostile', ...Array.from({ length: 11 }, (_, i) => `d${i + 1}`)];
    const seen: string[][] = [];
    let stagedSeen = 0;
    const r = await restore({
      host: through(w.host, slowStore(w.store)), index, manifest: w.manifest, target, workers, directReads: false, fetchIdleAfter: 8,
      onProgress: (p) => {
        if (p.filesDone === p.filesTotal) return;
        const entries = readdirSync(root, { withFileTypes: true });
        seen.push(entries.map((e) => e.name));
        stagedSeen += entries.filter((e) => e.name.startsWith('.bwr-') && e.isDirectory()).length;
      },
    });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, root)).toEqual([]); // directories' times too: set after the renames
    expect(seen.length).toBeGreaterThan(2);
    for (const names of seen) expect(names.filter((n) => fresh.includes(n))).toEqual([]);
    expect(stagedSeen).toBeGreaterThan(0); // directories under temporary names while the restore ran
    expect((await fs.readdir(root)).filter((n) => n.startsWith('.bwr-'))).toEqual([]);
  });

  it('a name taken while the restore ran: the staged directory is moved beside it and reported; what was there is untouched', async () => {
    const w = await world('taken');
    const index = (await w.host.loadIndex()).index;
    const target = path.join(tmp, 'taken-out');
    const parent = path.join(target, path.dirname(w.src));
    await fs.mkdir(parent, { recursive: true });
    const root = path.join(target, w.src);
    let planted = false;
    const r = await restore({
      host: through(w.host, slowStore(w.store)), index, manifest: w.manifest, target, workers: 2, directReads: false, fetchIdleAfter: 8,
      onProgress: () => {
        if (planted) return;
        planted = true;
        mkdirSync(root);
        writeFileSync(path.join(root, 'mine'), 'not from the snapshot');
      },
    });
    expect(planted).toBe(true);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]!.path).toBe(root);
    const beside = /restored to (\S+) instead$/.exec(r.errors[0]!.reason)?.[1];
    expect(beside).toMatch(new RegExp(`^${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.restored-[0-9a-f]{8}$`));
    expect(await fs.readdir(root)).toEqual(['mine']);
    expect(await fs.readFile(path.join(root, 'mine'), 'utf8')).toBe('not from the snapshot');
    expect(await compareTrees(w.src, beside!)).toEqual([]);
    expect((await fs.readdir(parent)).filter((n) => n.startsWith('.bwr-'))).toEqual([]);
  });
});

describe('restore: cancelled', () => {
  it.each([{ direct: true }, { direct: false }])('an abort mid-restore ends it with ABORTED; a rerun with overwrite completes it and sweeps the temporaries (direct reads: $direct)', async ({ direct }) => {
    const w = await world(`abort-${direct}`);
    const http = await serveOverHttp(w.store);
    servers.push(http);
    // every pack read takes 30 ms, through the workers or through the store: the abort lands mid-way
    http.fault = () => ({ delayMs: 30 });
    const host = through(w.host, direct ? http.store : slowStore(w.store));
    const index = (await w.host.loadIndex()).index;
    const target = path.join(tmp, `abort-${direct}-out`);
    const ac = new AbortController();
    let seen = 0;
    const started = Date.now();
    await expect(
      restore({ host, index, manifest: w.manifest, target, workers: 2, fetchIdleAfter: 8, directReads: direct, signal: ac.signal, onProgress: (p) => {
        seen = p.filesDone;
        if (p.filesDone >= 1) ac.abort();
      } }),
    ).rejects.toMatchObject({ code: 'ABORTED' });
    expect(seen).toBeGreaterThanOrEqual(1);
    expect(seen).toBeLessThan(136);
    expect(Date.now() - started).toBeLessThan(10_000);
    http.fault = () => undefined;
    const r = await restore({ host: w.host, index, manifest: w.manifest, target, workers: 2, overwrite: true });
    expect(r.errors).toEqual([]);
    expect(await compareTrees(w.src, path.join(target, w.src))).toEqual([]);
    const leftovers: string[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const e of await fs.readdir(d, { withFileTypes: true })) {
        if (e.name.startsWith('.bwr-')) leftovers.push(path.join(d, e.name));
        if (e.isDirectory()) await walk(path.join(d, e.name));
      }
    };
    await walk(target);
    expect(leftovers).toEqual([]);
  });
});
