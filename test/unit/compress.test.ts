/**
 * compress.ts: the flag byte scheme, the compress-or-not rule, standard zstd frames (blobs written
 * with earlier parameters still decode), and a floor on the ratio of real text, so that a speed
 * tweak of ZSTD_PARAMS cannot quietly give most of the compression away.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as zstd from 'zstd-napi';
import { compress, compressParts, decompress, ZSTD_PARAMS } from '../../common/repo/compress.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** This repository's own TypeScript sources, concatenated: real text, about 0.7 MB. */
function repoSources(): Buffer {
  const files = execFileSync('find', ['common', 'agent', 'controller', '-name', '*.ts'], { cwd: root, encoding: 'utf8' }).trim().split('\n').sort();
  return Buffer.concat(files.map((f) => readFileSync(path.join(root, f))));
}

describe('compress', () => {
  const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(30_000)); // 1.3 MB
  const cases: Array<[string, Buffer, number]> = [
    ['empty', Buffer.alloc(0), 0],
    ['one byte', Buffer.of(42), 0],
    ['random', randomBytes(200_000), 0],
    ['large random (probed)', randomBytes(1_500_000), 0],
    ['text', text.subarray(0, 50_000), 1],
    ['large text (probed)', text, 1],
  ];

  it.each(cases)('round-trips %s with the expected flag', (_name, plain, flag) => {
    const c = compress(plain);
    expect(c[0]).toBe(flag);
    expect(decompress(c, plain.length).equals(plain)).toBe(true);
    // compressParts is the same bytes in two pieces
    expect(Buffer.concat(compressParts(plain)).equals(c)).toBe(true);
  });

  it('stores data raw unless zstd saves at least 1/64', () => {
    // 1/128 of zeros in random bytes: zstd saves a little, not enough
    const barely = Buffer.concat([randomBytes(63_500), Buffer.alloc(500)]);
    expect(compress(barely)[0]).toBe(0);
    const enough = Buffer.concat([randomBytes(60_000), Buffer.alloc(4_000)]);
    expect(compress(enough)[0]).toBe(1);
  });

  it('writes standard zstd frames, within a 2 MiB window', () => {
    const c = compress(text);
    expect(Buffer.from(zstd.decompress(c.subarray(1))).equals(text)).toBe(true);
    const d = new zstd.Decompressor();
    d.setParameters({ windowLogMax: 21 }); // what frames of level 3 needed for large chunks
    expect(d.decompress(c.subarray(1)).equals(text)).toBe(true);
  });

  it('reads blobs compressed with the earlier parameters (zstd level 3)', () => {
    const old = new zstd.Compressor();
    old.setParameters({ compressionLevel: 3 });
    const stored = Buffer.concat([Buffer.of(1), old.compress(text)]);
    expect(decompress(stored, text.length).equals(text)).toBe(true);
  });

  it('rejects an unknown flag, damaged frames and a wrong length', () => {
    expect(() => decompress(Buffer.of(7, 1, 2, 3))).toThrow(/unknown compression flag/);
    const c = compress(text);
    expect(() => decompress(Buffer.concat([c.subarray(0, 20), Buffer.alloc(10)]))).toThrow(/damaged/);
    expect(() => decompress(c, text.length + 1)).toThrow(/expected/);
  });

  it('compresses real text well: this repository\'s sources at least 3.5× (about 4.0× when written; level 3: 4.35×)', () => {
    const src = repoSources();
    expect(src.length).toBeGreaterThan(200_000);
    // in chunk-sized pieces, as the backup compresses them
    let out = 0;
    for (let o = 0; o < src.length; o += 1 << 20) out += compress(src.subarray(o, o + (1 << 20))).length;
    expect(src.length / out).toBeGreaterThan(3.5);
  });

  it('keeps its parameters constant', () => {
    expect(Object.isFrozen(ZSTD_PARAMS)).toBe(true);
  });
});
