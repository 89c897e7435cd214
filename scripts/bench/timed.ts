/**
 * A benchmark's child process under /usr/bin/time (backup.ts, changed-file.ts): its wall time
 * (measured here), peak RSS and CPU time.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface Timed {
  /** Wall time of the process, measured here (s). */
  wall: number;
  /** From /usr/bin/time: max RSS (MB), user + sys CPU (s). */
  peakMB: number;
  cpu: number;
  stdout: string;
}

/**
 * Run a command (in the repository's root) under /usr/bin/time, whose figures go to a file in
 * `tmpDir`. `onLine` sees each stdout line and may answer on stdin. stderr is passed through; a
 * non-zero exit rejects with the tail of both.
 */
export function runTimed(tmpDir: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, onLine?: (line: string, child: ChildProcess) => void): Promise<Timed> {
  const timeFile = path.join(tmpDir, `time-${randomBytes(4).toString('hex')}`);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', timeFile, cmd, ...args], { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: string[] = [];
    const err: string[] = [];
    createInterface({ input: child.stdout! }).on('line', (line) => {
      out.push(line);
      onLine?.(line, child);
    });
    // passed through, and the tail kept for the error
    createInterface({ input: child.stderr! }).on('line', (line) => {
      process.stderr.write(`${line}\n`);
      err.push(line);
      if (err.length > 40) err.shift();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      const wall = (performance.now() - t0) / 1000;
      if (code !== 0) return reject(new Error(`${path.basename(cmd)} ${args.slice(0, 2).join(' ')} … exited with ${code}\n${[...out.slice(-10), ...err].join('\n')}`));
      const [kib, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
      rmSync(timeFile, { force: true });
      resolve({ wall, peakMB: (kib! * 1024) / 1e6, cpu: user! + sys!, stdout: out.join('\n') });
    });
  });
}
