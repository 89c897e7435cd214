/**
 * kill -9 of the controller at random moments while an agent backs up every 2 s: after each
 * restart (same data dir, same port) the agent reconnects by itself, no job is left running
 * forever, backups resume, the audit stays at 100 % and the latest snapshot restores.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { compareTrees } from '../helpers/fs-tree.js';
import { createLockedBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bin/bulwark.js');
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-ccrash-'));
const procs = new Set<ChildProcess>();
afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await fs.rm(tmp, { recursive: true, force: true });
});

function start(args: string[], env: Record<string, string> = {}): ChildProcess {
  const p = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, stdio: 'ignore' });
  procs.add(p);
  p.on('exit', () => procs.delete(p));
  return p;
}

async function cli(args: string[]): Promise<any> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [bin, '--admin', path.join(tmp, 'c/admin.json'), ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${args.join(' ')}: ${err}`))));
  });
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(300);
  }
}

describe('controller crashes', () => {
  it('5 kill -9 of the controller mid-work: no job stuck, backups resume, audit 100 %', async () => {
    const s3 = s3Config();
    const bucket = await createLockedBucket(rawClient(s3), 'ccrash');
    await fs.writeFile(path.join(tmp, 'pass'), 'crash test passphrase');
    const data = path.join(tmp, 'data');
    await fs.mkdir(data);
    const startController = (listen: string) => start(['controller', 'start', '--data-dir', path.join(tmp, 'c'), '--listen', listen]);
    let ctl = startController('127.0.0.1:0');
    const admin = await until('admin.json', async () => JSON.parse(await fs.readFile(path.join(tmp, 'c/admin.json'), 'utf8')));
    const address: string = admin.address;
    await cli(['target', 'add', 'main', '--endpoint', s3.endpoint, '--bucket', bucket, '--agent-key', s3.accessKeyId, '--agent-secret', s3.secretAccessKey, '--passphrase-file', path.join(tmp, 'pass')]);
    await cli(['policy', 'create', 'fast', '--target', 'main', '--path', data, '--schedule', 'every 2s', '--retention', '1h']);
    const tok = await cli(['token', 'create']);
    start(['agent', 'start', '--data-dir', path.join(tmp, 'a'), '--token', tok.token], { BULWARK_HOSTNAME: 'crashy' });

    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let k = 0; k < 5; k++) {
      await fs.writeFile(path.join(data, `f${k}.bin`), randomBytes(2_000_000));
      await sleep(500 + Math.floor(rand() * 2500));
      ctl.kill('SIGKILL');
      await new Promise((r) => ctl.once('exit', r));
      ctl = startController(address);
      // after a restart nothing is left 'running' or 'dispatched' from before it
      const started = Date.now();
      await until('controller back', () => cli(['hosts']));
      const jobs = await cli(['jobs']);
      for (const j of jobs) if (['running', 'dispatched'].includes(j.state)) expect(Number(j.createdMs)).toBeGreaterThanOrEqual(started - 5_000);
    }
    // the agent reconnects by itself and backups resume
    const host = await until('agent online', async () => (await cli(['hosts'])).find((h: any) => h.status === 'online'), 90_000);
    await fs.writeFile(path.join(data, 'final.txt'), 'after the crashes');
    const fin = await until('a backup after the crashes', async () => {
      const r = await cli(['backup', host.hostId, '--wait']);
      return r.state === 'succeeded' && r;
    }, 90_000);
    const jobs = await cli(['jobs']);
    expect(jobs.filter((j: any) => ['running', 'dispatched'].includes(j.state))).toEqual([]);
    expect(jobs.filter((j: any) => j.state === 'failed' && /restarted/.test(j.error?.message ?? '')).length + jobs.filter((j: any) => j.state === 'succeeded').length).toBeGreaterThan(3);
    const audit = await cli(['audit']);
    expect(audit.coverage).toBe(1);
    const out = path.join(tmp, 'out');
    const r = await cli(['restore', host.hostId, '--snapshot', fin.snapshotId, '--target', out, '--wait']);
    expect(r.state).toBe('succeeded');
    expect(await compareTrees(data, path.join(out, data), { mtimeOfDirs: false })).toEqual([]);
  });
});
