/**
 * Real text for the benchmarks (storage.ts, changed-file.ts): text files of this machine.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MiB = 1024 * 1024;

/** Where realText looks: this repository's dependencies, then what most Linux machines have. */
const TEXT_SOURCES = [fileURLToPath(new URL('../../node_modules', import.meta.url)), '/usr/share/doc', '/usr/include', '/usr/share/perl', '/usr/lib/python3'];
/** Names of files that are compressed or binary already. */
const NOT_TEXT = /\.(gz|xz|bz2|zst|zip|jar|png|jpe?g|gif|ico|woff2?|ttf|node|so(\.\d+)*|a|o|wasm|pyc|mo)$/i;

function* filesUnder(dir: string): Generator<string> {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* filesUnder(p);
    else if (e.isFile() && !NOT_TEXT.test(e.name)) yield p;
  }
}

/**
 * Real text, up to `size` bytes: the text files (no NUL byte in their first 4 KiB) under
 * TEXT_SOURCES, one file from each source in turn, each distinct content once (a repeated file
 * would deduplicate in the Packer). Source code, docs, licences and changelogs, JSON: what a
 * backup of a developer's machine or a server's /usr and /etc is made of. Its size and ratio
 * depend on the machine; the bench prints both.
 */
export function realText(size: number): { data: Uint8Array; files: number; sources: string[] } {
  const out = Buffer.allocUnsafe(size);
  const seen = new Set<string>();
  const head = Buffer.alloc(4096);
  const iters = TEXT_SOURCES.filter((d) => existsSync(d)).map((d) => ({ dir: d, it: filesUnder(d), used: 0 }));
  let at = 0;
  let files = 0;
  for (let live = iters.length; live > 0 && at < size; ) {
    live = 0;
    for (const src of iters) {
      if (at >= size) break;
      for (let r = src.it.next(); !r.done; r = src.it.next()) {
        let body: Buffer;
        try {
          const fd = openSync(r.value, 'r');
          try {
            if (head.subarray(0, readSync(fd, head, 0, head.length, 0)).includes(0)) continue;
          } finally {
            closeSync(fd);
          }
          body = readFileSync(r.value);
        } catch {
          continue;
        }
        if (body.length === 0 || body.includes(0)) continue;
        const h = createHash('sha256').update(body).digest('base64');
        if (seen.has(h)) continue;
        seen.add(h);
        const n = Math.min(body.length, size - at);
        body.copy(out, at, 0, n);
        at += n;
        files++;
        src.used += n;
        live++;
        break;
      }
    }
  }
  const sources = iters.filter((s) => s.used > 0).map((s) => `${s.dir} ${(s.used / MiB).toFixed(0)} MiB`);
  return { data: out.subarray(0, at), files, sources };
}
