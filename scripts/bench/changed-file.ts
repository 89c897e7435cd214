/**
 * A large file with a small change: Bulwark's incremental backup against restic's, on the same
 * files and the same S3 endpoint (the local Ceph RGW by default), in one run.
 *
 * Two files, each in a directory of its own: BENCH_MIB (default 1024) MiB of random data, and real
 * text of this machine (scripts/bench/real-text.ts, up to 256 MiB: as much distinct text as there
 * is). For each: a full backup with each tool, then BENCH_ROUNDS times (default 3) 4 KiB
 * overwritten at a new place in the middle and an incremental backup with each tool, in
 * alternating order. Neither tool tracks blocks: both read the whole file again and cut it into
 * the same chunks as before, except around the change. What differs is what they do with a chunk
 * they already have: restic hashes it and looks it up; Bulwark's seal workers hash it and find its
 * fingerprint among the ids stored (SealPool.markKnown), so they neither compress nor encrypt it.
 *
 * Bulwark runs in this process (AgentCore with its watcher on, as the agent does: the change
 * reaches its journal, and the incremental reads only that file); its figures are the backup's
 * wall time and this process's CPU time during it (all threads). restic (0.14, the Debian
 * package) is its own process, under /usr/bin/time. MB = 10^6 bytes. Prints figures and asserts
 * nothing; the last line is one JSON object.
 *
 * Run: npx tsx scripts/bench/changed-file.ts
 * Env: BENCH_MIB, BENCH_ROUNDS, BENCH_DIR (default /tmp/bulwark-bench-changed; removed at the
 *      end), BULWARK_S3_* (the endpoint; when unset, `scripts/s3-local.sh up` is run).
 * Needs restic and /usr/bin/time. S3 space: ~2 × the files per tool; Bulwark's objects stay locked
 * for 10 minutes.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { AgentCore } from '../../agent/agent-core.js';
import { Repository } from '../../common/repo/repository.js';
import { openS3Store } from '../../common/storage/open-store.js';
import { realText } from './real-text.js';
import { rawS3Client, s3Env } from './s3-env.js';
import { runTimed } from './timed.js';

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_MIB ?? 1024) * MiB;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const BASE = path.resolve(process.env.BENCH_DIR ?? '/tmp/bulwark-bench-changed');
const LOCK_MS = 600_000;
const RESTIC_PASSWORD = 'bulwark bench restic password';

const fmt = (x: number, d = 2): string => x.toFixed(d);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Overwrite 4 KiB of `file` at `at` with random bytes. */
function change(file: string, at: number): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, randomBytes(4096), 0, 4096, at);
  } finally {
    closeSync(fd);
  }
}

interface Side {
  full: { wall: number; cpu: number };
  incr: Array<{ wall: number; cpu: number }>;
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const s3 = s3Env();
  rmSync(BASE, { recursive: true, force: true });
  mkdirSync(BASE, { recursive: true });
  const restic = execFileSync('restic', ['version'], { encoding: 'utf8' }).split(' ')[1];
  console.log(`changed-file bench: node ${process.version}, restic ${restic}, S3 ${s3.endpoint}, ${ROUNDS} rounds; MB = 10^6 bytes`);

  // the files
  const inputs: Array<{ name: string; dir: string; file: string; size: number }> = [];
  const rnd = path.join(BASE, 'random');
  mkdirSync(rnd);
  const fd = openSync(path.join(rnd, 'big.bin'), 'w');
  const piece = Buffer.allocUnsafe(16 * MiB);
  for (let off = 0; off < SIZE; off += piece.length) writeSync(fd, randomFillSync(piece), 0, Math.min(piece.length, SIZE - off));
  closeSync(fd);
  inputs.push({ name: 'random data', dir: rnd, file: path.join(rnd, 'big.bin'), size: SIZE });
  const text = realText(Math.min(SIZE, 256 * MiB));
  if (text.data.length >= 64 * MiB) {
    const dir = path.join(BASE, 'text');
    mkdirSync(dir);
    const fdt = openSync(path.join(dir, 'big.txt'), 'w');
    writeSync(fdt, text.data);
    closeSync(fdt);
    inputs.push({ name: 'real text', dir, file: path.join(dir, 'big.txt'), size: text.data.length });
  } else console.log(`  (only ${fmt(text.data.length / MiB, 0)} MiB of text on this machine: the text file is left out)`);

  const client = rawS3Client(s3);
  const stamp = `${Date.now().toString(36)}-${randomBytes(2).toString('hex')}`;
  const toolEnv: NodeJS.ProcessEnv = { ...process.env, RESTIC_PASSWORD, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_DEFAULT_REGION: s3.region, RESTIC_CACHE_DIR: path.join(BASE, 'restic-cache') };
  delete toolEnv.AWS_CA_BUNDLE; // restic fails with it set in this environment
  const result: Record<string, number> = {};

  for (const [n, input] of inputs.entries()) {
    console.log(`\n${input.name}: one file of ${fmt(input.size / 1e6, 0)} MB`);
    // Bulwark: a locked bucket and repository, the agent core with its watcher
    const bw = `bench-changed-bw-${stamp}-${n}`;
    await client.send(new CreateBucketCommand({ Bucket: bw, ObjectLockEnabledForBucket: true }));
    const store = openS3Store({ endpoint: s3.endpoint, region: s3.region, bucket: bw, prefix: 'repo', accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + LOCK_MS };
    const repo = await Repository.init(store, { passphrase: 'bench', lock });
    const core = await AgentCore.open({ dataDir: path.join(BASE, `state-${n}`), hostname: 'bench', host: repo.host('bench'), roots: [input.dir], watch: true });
    const bwBackup = async (): Promise<{ wall: number; cpu: number }> => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await core.backup({ lock, expiresAt: lock.retainUntil });
      const c = process.cpuUsage(c0);
      return { wall: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6 };
    };
    // restic: a plain bucket
    const rs = `bench-changed-rs-${stamp}-${n}`;
    await client.send(new CreateBucketCommand({ Bucket: rs }));
    const resticRun = (args: string[]) => runTimed(BASE, 'restic', ['-r', `s3:${s3.endpoint}/${rs}`, ...args], toolEnv);
    await resticRun(['init']);
    const resticBackup = async (): Promise<{ wall: number; cpu: number }> => {
      const r = await resticRun(['backup', '--json', input.dir]);
      return { wall: r.wall, cpu: r.cpu };
    };

    const sides: Record<'Bulwark' | 'restic', Side> = { Bulwark: { full: await bwBackup(), incr: [] }, restic: { full: await resticBackup(), incr: [] } };
    try {
      for (let round = 0; round < ROUNDS; round++) {
        change(input.file, Math.floor(input.size / 2) + round * 1_048_583);
        await new Promise((r) => setTimeout(r, 1500)); // the watcher's event reaches the journal
        const order = round % 2 ? (['restic', 'Bulwark'] as const) : (['Bulwark', 'restic'] as const);
        for (const tool of order) sides[tool].incr.push(tool === 'Bulwark' ? await bwBackup() : await resticBackup());
      }
    } finally {
      await core.close();
    }
    for (const tool of ['Bulwark', 'restic'] as const) {
      const s = sides[tool];
      console.log(
        `  ${tool.padEnd(8)} full ${fmt(s.full.wall)} s (CPU ${fmt(s.full.cpu)} s); incremental after a 4 KiB change: ` +
          `${s.incr.map((r) => fmt(r.wall)).join(' / ')} s (CPU ${s.incr.map((r) => fmt(r.cpu)).join(' / ')} s), median ${fmt(median(s.incr.map((r) => r.wall)))} s`,
      );
    }
    const key = n === 0 ? 'random' : 'text';
    const bwMed = median(sides.Bulwark.incr.map((r) => r.wall));
    const rsMed = median(sides.restic.incr.map((r) => r.wall));
    result[`${key}_MB`] = Math.round(input.size / 1e6);
    result[`${key}_bulwark_incr_s`] = Number(fmt(bwMed));
    result[`${key}_restic_incr_s`] = Number(fmt(rsMed));
    result[`${key}_bulwark_incr_cpu_s`] = Number(fmt(median(sides.Bulwark.incr.map((r) => r.cpu))));
    result[`${key}_restic_incr_cpu_s`] = Number(fmt(median(sides.restic.incr.map((r) => r.cpu))));
    console.log(`  incremental, median: Bulwark ${fmt(bwMed)} s, restic ${fmt(rsMed)} s: restic / Bulwark = ${fmt(rsMed / bwMed)}`);
  }
  rmSync(BASE, { recursive: true, force: true });
  console.log(JSON.stringify({ bench: 'changed-file', ...result }));
}

await main();
