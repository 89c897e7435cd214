/**
 * kill -9 at chosen points, the parent side: run a fixture (test/fixtures/*-child.ts) in its own
 * process, told to SIGKILL itself `jitterMs` after its k-th step (test/helpers/kill-point.ts; k = 0:
 * as soon as it has opened, so during its own planning). The fixtures' steps are the storage calls
 * of the stage under test (a read of a restore, an extension, a delete) and the files a restore
 * moves into place, so the kill points spread over every stage whatever the machine's speed, and
 * the jitter lands them between steps too.
 *
 * Kill points come from a seeded generator: BULWARK_CRASH_SEED=<n> replays a run; the seed and
 * the points are printed when a test fails, or always with BULWARK_CRASH_LOG=1 (`killLog`).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onTestFailed, onTestFinished } from 'vitest';
import { rng } from './fs-tree.js';
import { s3Config } from './s3.js';

export interface KillPoint {
  /** Die after this many steps (0: once open). */
  step: number;
  /** … this much later (0: before the step's call is made). */
  jitterMs: number;
}

export interface ChildRun {
  /** Killed before it printed DONE. */
  killed: boolean;
  /** Steps it took. */
  steps: number;
  /** What followed DONE, when it finished. */
  done?: string;
}

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures');

/** BULWARK_S3_* for a child, from the S3 the test project provides. */
export function s3Env(): Record<string, string> {
  const cfg = s3Config();
  return { BULWARK_S3_ENDPOINT: cfg.endpoint, BULWARK_S3_ACCESS_KEY: cfg.accessKeyId, BULWARK_S3_SECRET_KEY: cfg.secretAccessKey, BULWARK_S3_REGION: cfg.region };
}

/** Run test/fixtures/<name> to the end, or to its kill point. A child that fails on its own rejects. */
export function runChild(name: string, env: Record<string, string>, kill?: KillPoint): Promise<ChildRun> {
  const killEnv = kill ? { KILL_AT_STEP: String(kill.step), KILL_JITTER_MS: String(kill.jitterMs) } : {};
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', path.join(fixtures, name)], { env: { ...process.env, ...env, ...killEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    const run: ChildRun = { killed: false, steps: 0 };
    let stderr = '';
    let pending = '';
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      const lines = (pending + d).split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        if (line.startsWith('STEP ')) run.steps++;
        else if (line.startsWith('DONE')) run.done = line.slice(5);
      }
    });
    p.on('error', reject);
    p.on('close', (code, signal) => {
      run.killed = signal === 'SIGKILL' && run.done === undefined;
      if (signal !== 'SIGKILL' && code !== 0) reject(new Error(`${name} failed (exit ${code}): ${stderr}`));
      else resolve(run);
    });
  });
}

/**
 * The seeded generator of a crash test, and a log of its kill points, printed if the test fails.
 * Call inside the test.
 */
export function killLog(test: string): { rand: () => number; seed: number; note: (line: string) => void } {
  const seed = Number(process.env.BULWARK_CRASH_SEED) || Math.floor(Math.random() * 2 ** 31);
  const lines: string[] = [];
  const print = () => console.error(`${test}: BULWARK_CRASH_SEED=${seed} replays these kill points:\n  ${lines.join('\n  ')}`);
  if (process.env.BULWARK_CRASH_LOG) onTestFinished(print);
  else onTestFailed(print);
  return { rand: rng(seed), seed, note: (line) => lines.push(line) };
}
