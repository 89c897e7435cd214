/**
 * File-tree helpers for backup/restore tests: build hostile trees, mutate them at random, and
 * compare two trees by type, content, mode, mtime and link target.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

export interface Difference {
  path: string;
  what: string;
}

/** A tree with the cases restores get wrong: odd names, links, empty things, modes, sizes. */
export async function makeHostileTree(root: string): Promise<void> {
  await fs.mkdir(root, { recursive: true });
  const w = (p: string, data: string | Buffer, mode?: number) => fs.writeFile(path.join(root, p), data, mode !== undefined ? { mode } : {});
  await w('plain.txt', 'hello\n');
  await w('empty', '');
  await w('name with spaces.txt', 'spaces');
  await w('new\nline', 'newline in name');
  await w('ünïcödé-日本語-🦀.txt', 'unicode');
  await w('x'.repeat(255), 'a 255-byte name');
  await w('é'.repeat(127) + 'a', 'a 255-byte name in two-byte characters');
  await w('big.bin', randomBytes(3 * 1024 * 1024 + 17));
  await w('compressible.txt', 'the same line again\n'.repeat(100_000));
  await w('exec.sh', '#!/bin/sh\necho hi\n', 0o755);
  await w('private', 'secret', 0o600);
  await fs.mkdir(path.join(root, 'empty-dir'));
  await fs.mkdir(path.join(root, 'deep/a/b/c/d'), { recursive: true });
  await w('deep/a/b/c/d/leaf.txt', 'deep leaf');
  await fs.symlink('plain.txt', path.join(root, 'link-to-file'));
  await fs.symlink('deep/a', path.join(root, 'link-to-dir'));
  await fs.symlink('/etc/passwd', path.join(root, 'absolute-link'));
  await fs.symlink('does-not-exist', path.join(root, 'dangling-link'));
  await w('hardlink-a', 'shared inode');
  await fs.link(path.join(root, 'hardlink-a'), path.join(root, 'hardlink-b'));
  await fs.mkdir(path.join(root, 'restricted-dir'), { mode: 0o700 });
  await w('restricted-dir/inside', 'in a 0700 dir');
  await fs.chmod(path.join(root, 'restricted-dir'), 0o750);
  const past = new Date('2001-02-03T04:05:06.789Z');
  await fs.utimes(path.join(root, 'plain.txt'), past, past);
  await fs.lutimes(path.join(root, 'link-to-file'), past, past);
}

async function digest(p: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(p)).digest('hex');
}

/** Compare `actual` against `expected`: every entry by type, content, mode, mtime (µs), link target. */
export async function compareTrees(expected: string, actual: string, opts: { mtimeOfDirs?: boolean } = {}): Promise<Difference[]> {
  const diffs: Difference[] = [];
  async function walk(rel: string): Promise<void> {
    const e = path.join(expected, rel);
    const a = path.join(actual, rel);
    const es = await fs.lstat(e, { bigint: true });
    let as;
    try {
      as = await fs.lstat(a, { bigint: true });
    } catch {
      diffs.push({ path: rel, what: 'missing' });
      return;
    }
    const type = (s: typeof es) => (s.isFile() ? 'file' : s.isDirectory() ? 'dir' : s.isSymbolicLink() ? 'symlink' : 'other');
    if (type(es) !== type(as)) {
      diffs.push({ path: rel, what: `type ${type(es)} vs ${type(as)}` });
      return;
    }
    if (!es.isSymbolicLink() && (es.mode & 0o7777n) !== (as.mode & 0o7777n)) diffs.push({ path: rel, what: `mode ${(es.mode & 0o7777n).toString(8)} vs ${(as.mode & 0o7777n).toString(8)}` });
    // to the microsecond, as restores promise, in integers: float milliseconds put a time 0.1 µs
    // below a millisecond boundary on the boundary, and its µs-exact restore 1 µs below it
    if ((!es.isDirectory() || opts.mtimeOfDirs !== false) && es.mtimeNs / 1000n !== as.mtimeNs / 1000n) diffs.push({ path: rel, what: `mtime ${es.mtimeNs} vs ${as.mtimeNs} ns` });
    if (es.isFile()) {
      if (es.size !== as.size) diffs.push({ path: rel, what: `size ${es.size} vs ${as.size}` });
      else if ((await digest(e)) !== (await digest(a))) diffs.push({ path: rel, what: 'content' });
    } else if (es.isSymbolicLink()) {
      const [et, at] = [await fs.readlink(e), await fs.readlink(a)];
      if (et !== at) diffs.push({ path: rel, what: `link ${et} vs ${at}` });
    } else if (es.isDirectory()) {
      const [en, an] = [(await fs.readdir(e)).sort(), (await fs.readdir(a)).sort()];
      for (const n of an) if (!en.includes(n)) diffs.push({ path: path.join(rel, n), what: 'unexpected' });
      for (const n of en) await walk(path.join(rel, n));
    }
  }
  await walk('');
  return diffs;
}

/** Deterministic pseudo-random generator for reproducible mutation rounds. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function listAll(root: string, rel = ''): Promise<Array<{ rel: string; dir: boolean }>> {
  const out: Array<{ rel: string; dir: boolean }> = [];
  for (const d of await fs.readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = path.join(rel, d.name);
    out.push({ rel: r, dir: d.isDirectory() });
    if (d.isDirectory()) out.push(...(await listAll(root, r)));
  }
  return out;
}

/** One round of random mutations: create, modify, truncate, rename, delete, chmod, dir → file. */
export async function mutate(root: string, rand: () => number, count = 8): Promise<string[]> {
  const done: string[] = [];
  for (let i = 0; i < count; i++) {
    const all = await listAll(root);
    const files = all.filter((e) => !e.dir);
    const dirs = all.filter((e) => e.dir);
    const pick = <T>(xs: T[]): T | undefined => xs[Math.floor(rand() * xs.length)];
    const op = Math.floor(rand() * 8);
    const f = pick(files);
    const d = pick(dirs);
    const name = `n${Math.floor(rand() * 1e9).toString(36)}`;
    try {
      if (op === 0 || !f) {
        const parent = d ? d.rel : '';
        await fs.writeFile(path.join(root, parent, name), randomBytes(Math.floor(rand() * 200_000)));
        done.push(`create ${path.join(parent, name)}`);
      } else if (op === 1) {
        const fh = await fs.open(path.join(root, f.rel), 'r+');
        await fh.write(randomBytes(100), 0, 100, Math.floor(rand() * 1000));
        await fh.close();
        done.push(`modify ${f.rel}`);
      } else if (op === 2) {
        await fs.truncate(path.join(root, f.rel), Math.floor(rand() * 10));
        done.push(`truncate ${f.rel}`);
      } else if (op === 3) {
        await fs.rename(path.join(root, f.rel), path.join(root, path.dirname(f.rel), name));
        done.push(`rename ${f.rel}`);
      } else if (op === 4) {
        await fs.rm(path.join(root, f.rel));
        done.push(`delete ${f.rel}`);
      } else if (op === 5) {
        await fs.chmod(path.join(root, f.rel), rand() < 0.5 ? 0o600 : 0o755);
        done.push(`chmod ${f.rel}`);
      } else if (op === 6 && d) {
        await fs.rm(path.join(root, d.rel), { recursive: true });
        await fs.writeFile(path.join(root, d.rel), 'was a directory');
        done.push(`dir→file ${d.rel}`);
      } else {
        const dir = path.join(d ? d.rel : '', name);
        await fs.mkdir(path.join(root, dir));
        await fs.writeFile(path.join(root, dir, 'f'), randomBytes(Math.floor(rand() * 5000)));
        done.push(`mkdir ${dir}`);
      }
    } catch (err) {
      done.push(`(failed: ${(err as Error).message})`);
    }
  }
  return done;
}
