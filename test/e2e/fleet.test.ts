/**
 * The fleet end to end, as an admin runs it: a controller and two agents as separate processes on
 * loopback (real gRPC over TLS with mTLS, real RGW with Object Lock, real chokidar and LevelDB),
 * driven through the `bulwark` CLI. Policy `every 5s`, retention 30s: snapshots accumulate and
 * expire, grooming removes the expired ones and deletes their objects once unlocked, the audit
 * reports 100 % lock coverage throughout, the latest snapshot of agent A restores onto agent B's
 * host byte-identical, and a point-in-time restore (--at) picks the right snapshot.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ListObjectVersionsCommand } from '@aws-sdk/client-s3';
import { afterAll, describe, expect, it, onTestFailed } from 'vitest';
import { compareTrees, mutate, rng } from '../helpers/fs-tree.js';
import { createLockedBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bin/bulwark.js');
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-e2e-'));
const procs: ChildProcess[] = [];
afterAll(async () => {
  for (const p of procs) p.kill('SIGTERM');
  await sleep(500);
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  await fs.rm(tmp, { recursive: true, force: true });
});

/** stderr of each daemon started, by name */
const logs = new Map<string, string>();

/** A daemon, started the way users start it: through bin/bulwark (the agent gets its memory settings there). */
function start(args: string[], name: string, env: Record<string, string> = {}): ChildProcess {
  const PATH = `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}`; // bin/bulwark runs `node`: this one
  const p = spawn(path.join(root, 'bin/bulwark'), args, { env: { ...process.env, ...env, PATH }, stdio: ['ignore', 'ignore', 'pipe'] });
  logs.set(name, '');
  p.stderr!.on('data', (d) => logs.set(name, logs.get(name) + String(d)));
  p.on('exit', (code) => {
    if (code && code !== 0) process.stderr.write(`${name} exited ${code}:\n${logs.get(name)}\n`);
  });
  procs.push(p);
  return p;
}

async function cli(args: string[], opts: { expectFail?: boolean } = {}): Promise<{ code: number; stdout: string; stderr: string; json: any }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [bin, '--admin', path.join(tmp, 'controller/admin.json'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => {
      // 'close', not 'exit': the output is read to its end
      if (!opts.expectFail && code !== 0) return reject(new Error(`bulwark ${args.join(' ')} → ${code}: ${stderr}${stdout}`));
      let json;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, stdout, stderr, json });
    });
  });
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}

describe('fleet end to end', () => {
  it('two agents, every 5s, retention 30s: backups, expiry, grooming, 100 % audit, cross-host and point-in-time restore', async () => {
    // on failure (a timeout included), what the daemons said
    onTestFailed(() => {
      for (const [name, log] of logs) process.stderr.write(`--- ${name} (last 4,000 characters of stderr):\n${log.slice(-4000)}\n`);
    });
    const s3 = s3Config();
    const bucket = await createLockedBucket(rawClient(s3), 'fleet');
    await fs.writeFile(path.join(tmp, 'pass'), 'e2e recovery passphrase\n');
    start(['controller', 'start', '--data-dir', path.join(tmp, 'controller'), '--listen', '127.0.0.1:0', '--maintenance-every', '5s'], 'controller');
    await until('controller', async () => fs.stat(path.join(tmp, 'controller/admin.json')).then(() => true));

    // user mistakes: one line, exit 2, no stack trace
    const bad = await cli(['policy', 'create', 'x', '--target', 'nope', '--path', '/d', '--schedule', 'every 5s', '--retention', 'soon'], { expectFail: true });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).not.toMatch(/at .*\.ts:\d+/);

    await cli(['target', 'add', 'main', '--endpoint', s3.endpoint, '--bucket', bucket, '--prefix', 'fleet', '--agent-key', s3.accessKeyId, '--agent-secret', s3.secretAccessKey, '--passphrase-file', path.join(tmp, 'pass')]);
    const dirs = { alpha: path.join(tmp, 'data-alpha'), beta: path.join(tmp, 'data-beta') };
    for (const [name, dir] of Object.entries(dirs)) {
      await fs.mkdir(path.join(dir, 'sub'), { recursive: true });
      for (let i = 0; i < 5; i++) await fs.writeFile(path.join(dir, 'sub', `f${i}`), randomBytes(50_000));
      await fs.writeFile(path.join(dir, 'hello.txt'), `hello from ${name}\n`);
      await cli(['policy', 'create', `p-${name}`, '--target', 'main', '--host', name, '--path', dir, '--schedule', 'every 5s', '--retention', '30s']);
    }
    for (const name of ['alpha', 'beta']) {
      const tok = await cli(['token', 'create', '--json']);
      // alpha in low-memory mode: bin/bulwark passes its start-up settings (else the agent says so)
      start(['agent', 'start', '--data-dir', path.join(tmp, `agent-${name}`), '--token', tok.json.token], `agent ${name}`, { BULWARK_HOSTNAME: name, ...(name === 'alpha' ? { BULWARK_LOW_MEMORY: '1' } : {}) });
    }
    const hosts = await until('two hosts with a backup', async () => {
      const r = await cli(['hosts', '--json']);
      return r.json.length === 2 && r.json.every((h: any) => Number(h.lastBackupMs) > 0) && r.json;
    }, 90_000);
    const idOf = (name: string) => hosts.find((h: any) => h.hostname === name).hostId as string;
    for (const name of ['alpha', 'beta']) {
      expect(logs.get(`agent ${name}`)).toContain('connecting to');
      expect(logs.get(`agent ${name}`)).not.toContain('started without bin/bulwark');
    }

    // ~60 s of mutations on alpha; audit after each round
    const rand = rng(7);
    const marks: Array<{ at: number; content: string }> = [];
    const t0 = Date.now();
    let audits = 0;
    while (Date.now() - t0 < 60_000) {
      await mutate(dirs.alpha, rand, 3);
      const content = `round ${marks.length} at ${Date.now()}\n`;
      await fs.writeFile(path.join(dirs.alpha, 'hello.txt'), content);
      await sleep(6_000);
      marks.push({ at: Date.now(), content });
      const audit = await cli(['audit', '--json']);
      expect(audit.json.coverage, JSON.stringify(audit.json.uncovered)).toBe(1);
      audits++;
    }
    expect(audits).toBeGreaterThanOrEqual(5);
    // the lock planner's last run per host is in the console, with a horizon past now
    const protection = (await cli(['protection', '--json'])).json;
    expect(protection.map((h: any) => h.hostname).sort()).toEqual(['alpha', 'beta']);
    for (const h of protection) {
      expect(h.last, JSON.stringify(h)).toBeTruthy();
      expect(h.last.failed).toBe(0);
      expect(h.last.horizonMs).toBeGreaterThan(Date.now());
    }
    const snaps = (await cli(['snapshots', idOf('alpha'), '--json'])).json;
    expect(snaps.length).toBeGreaterThanOrEqual(3);
    // retention 30 s: nothing older than ~30 s (+ a grooming period) is still listed
    expect(Math.min(...snaps.map((s: any) => Number(s.timeMs)))).toBeGreaterThan(Date.now() - 45_000);
    const groom = await cli(['groom', '--json']);
    expect(groom.json.failed).toBe(0);
    const jobs = (await cli(['jobs', '--json'])).json;
    expect(jobs.filter((j: any) => j.state === 'succeeded' && j.kind === 'backup').length).toBeGreaterThan(10);
    // expired snapshots' objects are really gone from the bucket once their locks ended
    const alphaBackups = jobs.filter((j: any) => j.state === 'succeeded' && j.kind === 'backup' && j.hostId === idOf('alpha')).length;
    const manifests = await rawClient(s3).send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: `fleet/hosts/${idOf('alpha')}/snapshots/` }));
    const stored = (manifests.Versions ?? []).length;
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThan(alphaBackups - 3);

    // cross-host restore: alpha's latest onto beta's host, byte-identical
    await until('alpha idle', async () => !(await cli(['jobs', '--json'])).json.some((j: any) => j.hostId === idOf('alpha') && ['queued', 'dispatched', 'running'].includes(j.state)) || undefined, 30_000).catch(() => true);
    const latest = (await cli(['snapshots', idOf('alpha'), '--json'])).json.at(-1);
    const out = path.join(tmp, 'restored-on-beta');
    const r = await cli(['restore', idOf('alpha'), '--snapshot', latest.id, '--to-host', idOf('beta'), '--target', out, '--wait', '--json']);
    expect(r.json.state).toBe('succeeded');
    const restoredHello = await fs.readFile(path.join(out, dirs.alpha, 'hello.txt'), 'utf8');
    expect(marks.map((m) => m.content)).toContain(restoredHello);

    // point in time: the snapshot at or before a mark has that mark's hello.txt (or a later round's not yet)
    const mark = marks.at(-3)!;
    const pit = path.join(tmp, 'pit');
    const r2 = await cli(['restore', idOf('alpha'), '--at', new Date(mark.at).toISOString(), '--path', path.join(dirs.alpha, 'hello.txt'), '--target', pit, '--wait', '--json']);
    expect(r2.json.state).toBe('succeeded');
    const pitHello = await fs.readFile(path.join(pit, dirs.alpha, 'hello.txt'), 'utf8');
    const idx = marks.findIndex((m) => m.content === pitHello);
    expect(idx).toBeGreaterThanOrEqual(0);
    expect(idx).toBeLessThanOrEqual(marks.length - 3);

    // a full restore of the latest matches the live tree once a backup has caught up
    await fs.writeFile(path.join(dirs.alpha, 'final.txt'), 'final');
    const fin = await cli(['backup', idOf('alpha'), '--wait', '--json']);
    expect(fin.json.state).toBe('succeeded');
    const full = path.join(tmp, 'full');
    const r3 = await cli(['restore', idOf('alpha'), '--snapshot', fin.json.snapshotId, '--target', full, '--wait', '--json']);
    expect(r3.json.state).toBe('succeeded');
    expect(await compareTrees(dirs.alpha, path.join(full, dirs.alpha), { mtimeOfDirs: false })).toEqual([]);
  });
});
