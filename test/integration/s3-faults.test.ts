/**
 * Bulwark against a misbehaving S3: the real RGW behind a fault-injecting proxy
 * (test/helpers/fault-proxy.ts) that answers some requests with 500 InternalError, 503 SlowDown,
 * a reset connection, a stall or a truncated body. The store is the product's own stack
 * (openS3Store: Limited(Retrying(S3Store))) with a short request timeout and quick backoffs.
 *
 * What must hold: a flaky endpoint slows a backup or restore but never fails or corrupts it; a
 * stall costs one request timeout, not a hang; a dead endpoint fails the backup clearly within
 * the retry budget and leaves every committed snapshot restorable.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentCore } from '../../agent/agent-core.js';
import { BulwarkError } from '../../common/errors.js';
import { HostRepository, Repository } from '../../common/repo/repository.js';
import type { TamperReport } from '../../common/repo/verified-read.js';
import type { BlobStore, ObjectLock } from '../../common/storage/blob-store.js';
import { openS3Store } from '../../common/storage/open-store.js';
import type { RetryOptions } from '../../common/storage/wrappers.js';
import { type FaultProxy, type FaultRule, type RequestKind, startFaultProxy } from '../helpers/fault-proxy.js';
import { compareTrees, makeHostileTree } from '../helpers/fs-tree.js';
import { TEST_PASSPHRASE } from '../helpers/repo.js';
import { createLockedBucket, rawClient, s3Config } from '../helpers/s3.js';

const cfg = s3Config();
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-faults-'));
const proxies: FaultProxy[] = [];
afterAll(async () => {
  for (const p of proxies) await p.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

const REQUEST_TIMEOUT_MS = 3_000;
const RETRY: RetryOptions = { baseDelayMs: 20, maxDelayMs: 200, budgetMs: 30_000 };
// Small chunks and packs, so that a few MB make dozens of PUTs and ranged GETs for the faults to hit.
const FAULT_REPO = { chunker: { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 }, packSize: 256 * 1024 };
const READS: RequestKind[] = ['GET', 'GET_RANGE', 'LIST'];

function s3Options(endpoint: string, bucket: string) {
  return { endpoint, region: cfg.region, bucket, prefix: 'repo', accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey, requestTimeoutMs: REQUEST_TIMEOUT_MS };
}

/** One line per test in the run's output: what was injected, so a passing run shows its work. */
function report(name: string, proxy: FaultProxy): void {
  console.log(`[s3-faults] ${name}: ${proxy.summary()}`);
}

async function startProxy(seed: number, rules: FaultRule[] = []): Promise<FaultProxy> {
  const p = await startFaultProxy({ target: cfg.endpoint, seed, rules });
  proxies.push(p);
  return p;
}

interface World {
  bucket: string;
  /** Straight to RGW, no proxy, default retries. */
  direct: BlobStore;
  repo: Repository;
  lock: ObjectLock;
  src: string;
}

/** A fresh locked bucket with a repository (initialised directly) and a source tree. */
async function world(name: string, randomMiB: number): Promise<World> {
  const bucket = await createLockedBucket(rawClient(cfg), name);
  const direct = openS3Store(s3Options(cfg.endpoint, bucket));
  const lock: ObjectLock = { mode: 'COMPLIANCE', retainUntil: (await direct.serverTime()) + 3_600_000 };
  const repo = await Repository.init(direct, { passphrase: TEST_PASSPHRASE, lock, config: FAULT_REPO });
  const src = path.join(tmp, name, 'src');
  await makeHostileTree(src);
  await fs.mkdir(path.join(src, 'random'));
  for (let i = 0; i < randomMiB; i++) await fs.writeFile(path.join(src, 'random', `r${i}.bin`), randomBytes(1024 * 1024 - 977 * i));
  for (let i = 0; i < 20; i++) await fs.writeFile(path.join(src, 'random', `small-${i}`), randomBytes(500 + i * 997));
  return { bucket, direct, repo, lock, src };
}

/** The host's view through `store`, reporting whatever a verified read found wrong. */
function hostOn(w: World, store: BlobStore, hostId: string, tamper?: TamperReport[]): HostRepository {
  return new HostRepository(store, w.repo.config, w.repo.hostKeys(hostId), tamper ? (r) => tamper.push(r) : undefined);
}

async function openAgent(w: World, host: HostRepository, dataDir: string): Promise<AgentCore> {
  return AgentCore.open({ dataDir: path.join(tmp, dataDir), hostname: host.hostId, host, roots: [w.src], watch: false });
}

/** Restore `manifest` with `agent` into a new directory and return the restored copy of the source. */
/** Restore into tmp/dir; the restored copy of w.src, and how the restore fetched its ranges. */
async function restoreTo(agent: AgentCore, w: World, manifest: Parameters<AgentCore['restore']>[0]['manifest'], dir: string): Promise<string> {
  return (await restoreWithStats(agent, w, manifest, dir)).restored;
}

async function restoreWithStats(agent: AgentCore, w: World, manifest: Parameters<AgentCore['restore']>[0]['manifest'], dir: string) {
  const target = path.join(tmp, dir);
  const r = await agent.restore({ manifest, target });
  expect(r.errors).toEqual([]);
  return { restored: path.join(target, w.src), ranges: r.ranges };
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function rejection(p: Promise<unknown>): Promise<BulwarkError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the promise should have been rejected').toBeInstanceOf(BulwarkError);
  return err as BulwarkError;
}

// Each test has its own timeout, well above its normal run time (2–8 s): a hang fails fast.
describe('S3 faults between the agent and RGW', () => {
  it('20 % of requests faulted (500, SlowDown, resets, truncated bodies): backup completes, restore is byte-identical', async () => {
    const w = await world('faults-mix', 5);
    // 20 % of every kind of request. On reads the four faults take turns, so each of them is
    // certainly injected; on writes and the rest, 500 / SlowDown / reset at random. Phases at
    // random: before the server sees the request, after it handled it (a PUT is stored but the
    // client is told it failed), or in the middle of the response body.
    const proxy = await startProxy(20261127, [
      { fault: ['truncate', 'error500', 'reset', 'slowDown'], order: 'cycle', kinds: READS, rate: 0.2, phase: ['before', 'after', 'mid'] },
      { fault: ['error500', 'slowDown', 'reset'], kinds: ['PUT', 'HEAD', 'BUCKET', 'DELETE', 'OTHER'], rate: 0.2, phase: ['before', 'after'] },
    ]);
    const retried: string[] = [];
    const tamper: TamperReport[] = [];
    const store = openS3Store(s3Options(proxy.url, w.bucket), { retry: { ...RETRY, onRetry: (what, _n, err) => retried.push(`${what}: ${err.code}`) } });
    const host = hostOn(w, store, 'host-mix', tamper);
    const agent = await openAgent(w, host, 'mix-data');
    let snapshotId: string;
    try {
      const b = await agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil });
      expect(b.skipped).toEqual([]);
      snapshotId = b.snapshotId;
    } finally {
      await agent.close();
    }
    const backupFaults = proxy.stats.faults.total;
    // the restore as on a new machine, all through the faults: the snapshot, the host's indexes
    // (listed and read) and the packs (ranged reads)
    const restorer = await openAgent(w, host, 'mix-restore-data');
    let ranges: { direct: number; directFailed: number; directResent: number; viaStore: number };
    try {
      const r = await restoreWithStats(restorer, w, await host.loadSnapshot(snapshotId), 'mix-out');
      ranges = r.ranges;
      expect(await compareTrees(w.src, r.restored)).toEqual([]);
    } finally {
      await restorer.close();
    }

    const s = proxy.stats;
    const why = proxy.summary();
    report('20 % mix', proxy);
    // not vacuous: each kind of fault was injected, on uploads and on ranged reads, in the backup
    // and in the restore
    for (const f of ['error500', 'slowDown', 'reset', 'truncate'] as const) expect(s.faults.byType[f], `${f}: ${why}`).toBeGreaterThan(0);
    expect(s.faults.byType.stall).toBe(0);
    expect(Object.values(s.faults.byKind.PUT).reduce((a, n) => a + n, 0), why).toBeGreaterThan(0);
    expect(Object.values(s.faults.byKind.GET_RANGE).reduce((a, n) => a + n, 0), why).toBeGreaterThan(0);
    expect(s.events.some((e) => e.kind === 'PUT' && e.phase === 'after'), why).toBe(true);
    expect(backupFaults, why).toBeGreaterThan(0);
    expect(s.faults.total - backupFaults, why).toBeGreaterThan(0);
    // about a fifth of all requests (retries included) were faulted
    expect(s.requests.total, why).toBeGreaterThan(60);
    expect(s.faults.total / s.requests.total, why).toBeGreaterThan(0.1);
    expect(s.faults.total / s.requests.total, why).toBeLessThan(0.32);
    // the restore's workers fetched ranges themselves (presigned GETs through the same proxy),
    // and some of those were faulted too
    expect(ranges.direct, why).toBeGreaterThan(0);
    expect(ranges.directFailed, why).toBeGreaterThan(0);
    // every fault reached the store as a retryable error and was retried, or failed a worker's
    // fetch, which the store then did again, or reset a worker's kept-alive connection before any
    // byte of the answer, and the worker sent that GET again on a new one — none was mistaken for a
    // permanent one, and no truncated body got through to verification
    expect(retried.length + ranges.directFailed + ranges.directResent, `${why}\n${JSON.stringify(ranges)}\n${retried.join('\n')}`).toBe(s.faults.total);
    expect(retried.every((r) => /: (TRANSIENT|THROTTLED)$/.test(r))).toBe(true);
    expect(tamper).toEqual([]);
  }, 60_000);

  it('stalled PUTs and stalled response bodies cost a request timeout each, not a hang', async () => {
    const w = await world('faults-stall', 1);
    // held for 30 s: only the client's 3 s request timeout ends them quickly
    const proxy = await startProxy(7, [{ fault: 'stall', kinds: ['PUT'], rate: 0.5, max: 2, phase: ['before', 'after'], stallMs: 30_000 }]);
    const store = openS3Store(s3Options(proxy.url, w.bucket), { retry: RETRY });
    const agent = await openAgent(w, hostOn(w, store, 'host-stall'), 'stall-data');
    try {
      let t0 = Date.now();
      const b = await agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil });
      const backupMs = Date.now() - t0;
      report(`stalled PUTs (backup ${backupMs} ms)`, proxy);
      expect(proxy.stats.faults.byKind.PUT.stall, proxy.summary()).toBe(2);
      expect(backupMs, proxy.summary()).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS);
      expect(backupMs, proxy.summary()).toBeLessThan(20_000);

      // a body that stops half-way, after the status line and the headers
      proxy.setRules([{ fault: 'stall', kinds: ['GET_RANGE'], phase: 'mid', max: 1, stallMs: 30_000 }]);
      t0 = Date.now();
      const restored = await restoreTo(agent, w, b.manifest, 'stall-out');
      const restoreMs = Date.now() - t0;
      report(`stalled body (restore ${restoreMs} ms)`, proxy);
      expect(proxy.stats.faults.byKind.GET_RANGE.stall, proxy.summary()).toBe(1);
      expect(proxy.stats.events.at(-1)!.phase).toBe('mid');
      expect(restoreMs, proxy.summary()).toBeLessThan(20_000);
      expect(await compareTrees(w.src, restored)).toEqual([]);
    } finally {
      await agent.close();
    }
  }, 45_000);

  it('an endpoint that dies mid-backup: a clear THROTTLED error within the budget; committed snapshots stay restorable', async () => {
    const w = await world('faults-dead', 1);
    const proxy = await startProxy(3);
    const healthy = openS3Store(s3Options(proxy.url, w.bucket), { retry: RETRY });
    let agent = await openAgent(w, hostOn(w, healthy, 'host-dead'), 'dead-data');
    let first;
    let firstCopy: string;
    try {
      first = await agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil });
      firstCopy = await restoreTo(agent, w, first.manifest, 'dead-out-1');
      expect(await compareTrees(w.src, firstCopy)).toEqual([]);
    } finally {
      await agent.close();
    }
    // new data for the next backup: a dozen packs to upload
    await fs.writeFile(path.join(w.src, 'random', 'later.bin'), randomBytes(3 * 1024 * 1024));

    // three more PUTs get through, then every request is answered 503 SlowDown
    proxy.setRules([{ fault: 'slowDown', match: () => proxy.stats.requests.byKind.PUT > 3 }]);
    proxy.resetStats();
    const budgetMs = 3_000;
    const dying = openS3Store(s3Options(proxy.url, w.bucket), { retry: { ...RETRY, budgetMs, maxAttempts: 1_000 } });
    agent = await openAgent(w, hostOn(w, dying, 'host-dead'), 'dead-data');
    try {
      const t0 = Date.now();
      const err = await rejection(agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil }));
      const ms = Date.now() - t0;
      report(`dead endpoint (failed after ${ms} ms: ${err.message})`, proxy);
      expect(err.code).toBe('THROTTLED');
      // names the operation and the object, and what the server said
      expect(err.message).toMatch(/^(put|get|head|list|list versions) \S+: SlowDown: /);
      // the budget, not the attempt count, ended it: retried for about the budget, then gave up
      expect(ms).toBeGreaterThanOrEqual(budgetMs - 500);
      expect(ms).toBeLessThan(budgetMs + 4_000);
      expect(proxy.stats.requests.byKind.PUT, proxy.summary()).toBeGreaterThan(3);
      expect(proxy.stats.faults.byType.slowDown, proxy.summary()).toBeGreaterThan(10);
    } finally {
      await agent.close();
    }

    // nothing committed is wrong: the failed backup recorded no snapshot, the first one restores
    // as it was (straight from RGW), and the next backup (reusing what the failed one uploaded)
    // completes and restores the tree as it is now
    proxy.setRules([]);
    const direct = hostOn(w, w.direct, 'host-dead');
    expect(await direct.snapshotIds()).toEqual([first.snapshotId]);
    agent = await openAgent(w, direct, 'dead-data');
    try {
      const again = await restoreTo(agent, w, first.manifest, 'dead-out-2');
      expect(await compareTrees(firstCopy, again)).toEqual([]);
      const next = await agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil });
      expect(next.skipped).toEqual([]);
      expect((await direct.snapshotIds()).sort()).toEqual([first.snapshotId, next.snapshotId].sort());
      const now = await restoreTo(agent, w, next.manifest, 'dead-out-3');
      expect(await compareTrees(w.src, now)).toEqual([]);
    } finally {
      await agent.close();
    }
  }, 45_000);

  it('a refused endpoint: the backup fails with TRANSIENT naming the operation, within the budget', async () => {
    const w = await world('faults-refused', 0);
    const budgetMs = 3_000;
    let retries = 0;
    const store = openS3Store(s3Options(`http://127.0.0.1:${await closedPort()}`, w.bucket), { retry: { ...RETRY, budgetMs, maxAttempts: 1_000, onRetry: () => retries++ } });
    // a fresh agent lists the host's indexes first: a listing must keep to the budget too
    const agent = await openAgent(w, hostOn(w, store, 'host-refused'), 'refused-data');
    try {
      const t0 = Date.now();
      const err = await rejection(agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil }));
      const ms = Date.now() - t0;
      console.log(`[s3-faults] refused endpoint: failed after ${ms} ms and ${retries} retries: ${err.message}`);
      expect(err.code).toBe('TRANSIENT');
      expect(err.message).toMatch(/^(put|get|head|list|list versions) \S+: .*ECONNREFUSED/);
      expect(ms).toBeLessThan(budgetMs + 3_000);
    } finally {
      await agent.close();
    }
    expect(retries).toBeGreaterThan(5);
  }, 30_000);

  it('never a corrupt snapshot: after a backup through faulted uploads, the snapshot read straight from RGW restores identical', async () => {
    const w = await world('faults-verify', 3);
    // uploads hit hard (30 %), after the server stored them: the client is told the PUT failed,
    // and its retry stores the same object again as a second version
    const proxy = await startProxy(99, [
      { fault: ['error500', 'slowDown', 'reset'], kinds: ['PUT'], rate: 0.3, phase: 'after' },
      { fault: ['error500', 'reset', 'truncate'], kinds: READS, rate: 0.15, phase: ['before', 'mid'] },
    ]);
    const store = openS3Store(s3Options(proxy.url, w.bucket), { retry: RETRY });
    const agent = await openAgent(w, hostOn(w, store, 'host-verify'), 'verify-data');
    let b;
    try {
      b = await agent.backup({ lock: w.lock, expiresAt: w.lock.retainUntil });
      expect(b.skipped).toEqual([]);
    } finally {
      await agent.close();
    }
    report('faulted uploads', proxy);
    const afterPuts = proxy.stats.events.filter((e) => e.kind === 'PUT' && e.phase === 'after');
    expect(afterPuts.length, proxy.summary()).toBeGreaterThan(0);

    // straight from RGW, through a repository opened with the passphrase alone
    const repo = await Repository.open(w.direct, { passphrase: TEST_PASSPHRASE });
    const tamper: TamperReport[] = [];
    const host = new HostRepository(w.direct, repo.config, repo.hostKeys('host-verify'), (r) => tamper.push(r));
    const manifest = await host.loadSnapshot(b.snapshotId);
    expect(manifest.packs.length).toBeGreaterThan(10);
    // every pack the snapshot names is whole: its bytes hash to its id and its header parses
    for (const p of manifest.packs) expect((await host.readPackHeader(p)).length).toBeGreaterThan(0);
    // the faulted-after uploads left duplicate versions behind, and they did no harm
    const versions = new Map<string, number>();
    for await (const v of w.direct.listVersions('hosts/')) versions.set(v.key, (versions.get(v.key) ?? 0) + 1);
    expect([...versions.values()].some((n) => n > 1)).toBe(true);

    const fresh = await openAgent(w, host, 'verify-restore-data');
    try {
      const restored = await restoreTo(fresh, w, manifest, 'verify-out');
      expect(await compareTrees(w.src, restored)).toEqual([]);
    } finally {
      await fresh.close();
    }
    expect(tamper).toEqual([]);
  }, 60_000);
});
