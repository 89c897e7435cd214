/**
 * kill -9 in the middle of a backup: every committed snapshot stays intact, the next backup
 * completes, reuses the packs the killed one had uploaded, and restores to the live tree.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentCore } from '../../agent/agent-core.js';
import { compareTrees } from '../helpers/fs-tree.js';
import { TEST_PASSPHRASE, freshRepo } from '../helpers/repo.js';
import { s3Config } from '../helpers/s3.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-crash-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));
const child = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/backup-child.ts');

/** The backup child's configuration (test/fixtures/backup-child.ts). */
function childEnv(bucket: string, dataDir: string, root: string, lockUntil: number, host: string): Record<string, string> {
  const cfg = s3Config();
  return {
    BULWARK_S3_ENDPOINT: cfg.endpoint,
    BULWARK_S3_ACCESS_KEY: cfg.accessKeyId,
    BULWARK_S3_SECRET_KEY: cfg.secretAccessKey,
    BUCKET: bucket,
    PASSPHRASE: TEST_PASSPHRASE,
    DATA_DIR: dataDir,
    ROOT: root,
    LOCK_UNTIL: String(lockUntil),
    HOST: host,
  };
}

/**
 * Run the backup child and SIGKILL it `ms` milliseconds after it has opened (or let it finish
 * first); `backupMs` is how long it took from open to done when it finished.
 */
function runAndKillAfter(env: Record<string, string>, ms: number): Promise<{ finished: boolean; backupMs?: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let finished = false;
    let started = 0;
    let backupMs: number | undefined;
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    let t: NodeJS.Timeout | undefined;
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      // time from the agent being open, not from process start: start-up time varies with load
      if (d.includes('STARTED') && !t) {
        started = performance.now();
        if (Number.isFinite(ms)) t = setTimeout(() => p.kill('SIGKILL'), ms);
      }
      if (d.includes('DONE')) {
        finished = true;
        backupMs = performance.now() - started;
      }
    });
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      clearTimeout(t);
      if (signal !== 'SIGKILL' && code !== 0) reject(new Error(`backup child failed (${code}): ${stderr}`));
      else resolve({ finished, ...(backupMs !== undefined ? { backupMs } : {}) });
    });
  });
}

/** Run the backup child and SIGKILL it once it has uploaded at least `killAfter` bytes. */
function runAndKill(env: Record<string, string>, killAfter: number): Promise<{ killedAt: number; finished: boolean }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let uploaded = 0;
    let finished = false;
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      for (const line of d.split('\n')) {
        const m = /^UPLOADED (\d+)/.exec(line);
        if (m) uploaded = Number(m[1]);
        if (line.startsWith('DONE')) finished = true;
      }
      if (uploaded >= killAfter && !p.killed) p.kill('SIGKILL');
    });
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      if (signal !== 'SIGKILL' && code !== 0) reject(new Error(`backup child failed (${code}): ${stderr}`));
      else resolve({ killedAt: uploaded, finished });
    });
  });
}

describe('crash safety against RGW', () => {
  it('kill -9 during a backup: committed snapshots intact, next backup completes and reuses uploaded packs', async () => {
    const { repo, lock, bucket } = await freshRepo('agent-crash');
    const src = path.join(tmp, 'src');
    await fs.mkdir(path.join(src, 'd'), { recursive: true });
    await fs.writeFile(path.join(src, 'keep.txt'), 'version 1');
    const dataDir = path.join(tmp, 'data');
    const host = repo.host('crash');
    let core = await AgentCore.open({ dataDir, hostname: 'crash', host, roots: [src], watch: false });
    const first = await core.backup({ lock, expiresAt: lock.retainUntil });
    await core.close();

    // 24 MiB of new random data (12 packs of 2 MiB), and a changed file
    for (let i = 0; i < 24; i++) await fs.writeFile(path.join(src, 'd', `f${i}`), randomBytes(1024 * 1024));
    await fs.writeFile(path.join(src, 'keep.txt'), 'version 2');
    const env = childEnv(bucket, dataDir, src, lock.retainUntil, 'crash');
    const killed = await runAndKill(env, 6 * 1024 * 1024);
    expect(killed.finished).toBe(false);
    expect(killed.killedAt).toBeGreaterThanOrEqual(6 * 1024 * 1024);

    core = await AgentCore.open({ dataDir, hostname: 'crash', host, roots: [src], watch: false });
    try {
      const second = await core.backup({ lock, expiresAt: lock.retainUntil });
      expect(second.manifest.parent).toBe(first.snapshotId);
      // the killed run's packs were adopted: far less than 24 MiB went up again
      expect(second.manifest.stats.bytesUploaded).toBeLessThan(24 * 1024 * 1024 - killed.killedAt / 2);
      const out2 = path.join(tmp, 'out2');
      expect((await core.restore({ manifest: second.manifest, target: out2 })).errors).toEqual([]);
      expect(await compareTrees(src, path.join(out2, src))).toEqual([]);
      // the first snapshot is untouched
      const out1 = path.join(tmp, 'out1');
      expect((await core.restore({ manifest: (await host.loadSnapshot(first.snapshotId)), target: out1 })).errors).toEqual([]);
      expect(await fs.readFile(path.join(out1, src, 'keep.txt'), 'utf8')).toBe('version 1');
      expect(await fs.readdir(path.join(out1, src, 'd'))).toEqual([]);
    } finally {
      await core.close();
    }
  });
});

describe('random kill points', () => {
  it('20 backups killed at random moments: every committed snapshot stays restorable, the next backup completes', async () => {
    const { repo, lock, bucket } = await freshRepo('agent-killpoints');
    const src = path.join(tmp, 'kp-src');
    await fs.mkdir(src, { recursive: true });
    const dataDir = path.join(tmp, 'kp-data');
    const host = repo.host('kp');
    const env = childEnv(bucket, dataDir, src, lock.retainUntil, 'kp');
    // deterministic "random" kill times, spread over the child's start-up, walk, uploads and commit
    let seed = 20261127;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    let killed = 0;
    let finished = 0;
    // how long one such backup takes here, unkilled: the kill points are spread over twice that (a
    // fixed 0–700 ms window let most backups finish once they had become faster; a backup after a
    // killed one, which adopts its packs, takes about twice as long as one after a finished one)
    const writeRound = async (round: number) => {
      for (let i = 0; i < 3; i++) await fs.writeFile(path.join(src, `r${round}-${i}.bin`), randomBytes(1_500_000));
    };
    // (twice: the first backup of a repository has no index or parent to load)
    let span = 0;
    for (const round of [-2, -1]) {
      await writeRound(round);
      const calibration = await runAndKillAfter(env, Infinity);
      expect(calibration.finished).toBe(true);
      span = Math.max(span, calibration.backupMs! * 2);
    }
    for (let round = 0; round < 20; round++) {
      await writeRound(round);
      // kill points spread over the walk, the uploads, the manifest and the journal commit
      const r = await runAndKillAfter(env, Math.floor(rand() * span));
      if (r.finished) finished++;
      else killed++;
    }
    expect(killed).toBeGreaterThanOrEqual(8);
    // whatever was committed before or between the kills is intact...
    const snaps = await host.loadSnapshots();
    const core = await AgentCore.open({ dataDir, hostname: 'kp', host, roots: [src], watch: false });
    try {
      for (const s of snaps) {
        const out = path.join(tmp, `kp-out-${s.id.slice(0, 8)}`);
        const res = await core.restore({ manifest: s.manifest, target: out });
        expect(res.errors, s.id).toEqual([]);
        expect(res.files).toBe(s.manifest.stats.files);
      }
      // ...and a final backup completes and matches the live tree
      const last = await core.backup({ lock, expiresAt: lock.retainUntil });
      const out = path.join(tmp, 'kp-final');
      expect((await core.restore({ manifest: last.manifest, target: out })).errors).toEqual([]);
      expect(await compareTrees(src, path.join(out, src))).toEqual([]);
    } finally {
      await core.close();
    }
    expect(finished + killed).toBe(20);
  });
});
