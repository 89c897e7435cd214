import { createCipheriv, createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BulwarkError } from '../../common/errors.js';
import {
  Chunker,
  type ChunkerParams,
  chunkBuffer,
  compileChunkerOptions,
  createGearTable,
  DEFAULT_CHUNKER_PARAMS,
  type GearTable,
} from '../../common/repo/chunker.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Small parameters so that a few MiB give hundreds of chunks. */
const SMALL = compileChunkerOptions({ minSize: 2 * KiB, avgSize: 8 * KiB, maxSize: 64 * KiB });

/** Reproducible pseudo-random bytes: the AES-256-CTR keystream of a label. */
function randomData(size: number, label = 'data'): Uint8Array {
  const key = createHash('sha256').update(label).digest();
  return new Uint8Array(createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size)));
}

function seed(label: string): Uint8Array {
  return new Uint8Array(createHash('sha256').update(`seed:${label}`).digest());
}

/** Reproducible small random integers (mulberry32). */
function prng(state: number): (below: number) => number {
  return (below) => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) % below);
  };
}

/**
 * FastCDC written out plainly, straight from the paper, as the oracle: chunk by chunk, skip
 * minSize, hash with unsigned arithmetic, test the top bits with a shift rather than a mask.
 */
function referenceCuts(data: Uint8Array, table: GearTable, p: ChunkerParams): number[] {
  const bits = Math.log2(p.avgSize);
  const cuts: number[] = [];
  let start = 0;
  while (start < data.length) {
    const n = Math.min(data.length - start, p.maxSize);
    let cut = n;
    let h = 0;
    for (let k = p.minSize; k < n; k++) {
      h = ((h * 2) + table[data[start + k]!]!) % 2 ** 32;
      const topBits = k < p.avgSize ? bits + 2 : bits - 2;
      if (Math.floor(h / 2 ** (32 - topBits)) === 0) {
        cut = k + 1;
        break;
      }
    }
    start += cut;
    cuts.push(start);
  }
  return cuts;
}

function cutsOf(chunks: readonly Uint8Array[]): number[] {
  const cuts: number[] = [];
  let at = 0;
  for (const c of chunks) cuts.push((at += c.length));
  return cuts;
}

function streamed(data: Uint8Array, table: GearTable, p: ChunkerParams, nextSize: () => number): Uint8Array[] {
  const chunker = new Chunker(table, p);
  const chunks: Uint8Array[] = [];
  let mostPending = 0;
  for (let off = 0; off < data.length; ) {
    const end = Math.min(data.length, off + nextSize());
    for (const c of chunker.push(data.subarray(off, end))) chunks.push(c);
    mostPending = Math.max(mostPending, chunker.pendingBytes);
    off = end;
  }
  expect(mostPending).toBeGreaterThan(0);
  expect(mostPending).toBeLessThan(p.maxSize);
  const last = chunker.finish();
  if (last !== null) chunks.push(last);
  return chunks;
}

function concatAll(chunks: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(chunks));
}

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function expectInvalid(fn: () => unknown, message: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(BulwarkError);
  expect((caught as BulwarkError).code).toBe('INVALID_ARGUMENT');
  expect((caught as BulwarkError).message).toMatch(message);
}

describe('compileChunkerOptions', () => {
  it('fills in 512 KiB / 1 MiB / 8 MiB and derives 22- and 18-bit high masks', () => {
    const p = compileChunkerOptions();
    expect(p).toMatchObject({ minSize: 512 * KiB, avgSize: 1 * MiB, maxSize: 8 * MiB });
    expect(p).toMatchObject(DEFAULT_CHUNKER_PARAMS);
    expect(p.maskS >>> 0).toBe(0xfffffc00); // top 22 bits
    expect(p.maskL >>> 0).toBe(0xffffc000); // top 18 bits
    expect(compileChunkerOptions({ maxSize: 4 * MiB })).toMatchObject({ minSize: 512 * KiB, maxSize: 4 * MiB });
  });

  it.each([
    [{ avgSize: 1000 * KiB }, /power of two/],
    [{ avgSize: 128 }, /power of two/],
    [{ avgSize: 512 * MiB, maxSize: 1024 * MiB }, /power of two/],
    [{ minSize: 1 * MiB }, /minSize < avgSize < maxSize/],
    [{ minSize: 2 * MiB }, /minSize < avgSize < maxSize/],
    [{ maxSize: 1 * MiB }, /minSize < avgSize < maxSize/],
    [{ maxSize: 512 * KiB }, /minSize < avgSize < maxSize/],
    [{ minSize: 32 }, /at least 64/],
    [{ minSize: 0 }, /positive whole numbers/],
    [{ minSize: -1 }, /positive whole numbers/],
    [{ maxSize: 1.5 * MiB + 0.5 }, /positive whole numbers/],
    [{ maxSize: Number.NaN }, /positive whole numbers/],
    [{ maxSize: 2048 * MiB }, /at most 1 GiB/],
  ])('rejects %j with INVALID_ARGUMENT', (options, message) => {
    expectInvalid(() => compileChunkerOptions(options), message);
  });
});

describe('createGearTable', () => {
  it('is SHA-256(label || 0x00 || seed || k), read as big-endian words', () => {
    const s = seed('a');
    const table = createGearTable(s);
    const block = (k: number): Buffer =>
      createHash('sha256').update('bulwark/chunker/gear/v1').update(Buffer.of(0)).update(s).update(Buffer.of(k)).digest();
    expect(table).toHaveLength(256);
    expect(table[0]).toBe(block(0).readUInt32BE(0));
    expect(table[9]).toBe(block(1).readUInt32BE(4));
    expect(table[255]).toBe(block(31).readUInt32BE(28));
    expect(createGearTable(seed('a'))).toEqual(table);
    expect(createGearTable(seed('b'))).not.toEqual(table);
  });

  it.each([0, 16, 31, 33])('rejects a %d-byte seed', (n) => {
    expectInvalid(() => createGearTable(new Uint8Array(n)), /32 bytes/);
  });
});

describe('chunkBuffer', () => {
  const data = randomData(4 * MiB);
  const table = createGearTable(seed('a'));
  const chunks = chunkBuffer(data, table, SMALL);

  it('cuts where a plain FastCDC implementation cuts', () => {
    expect(cutsOf(chunks)).toEqual(referenceCuts(data, table, SMALL));
  });

  it('returns chunks that concatenate to the input, as views of it', () => {
    expect(Buffer.compare(concatAll(chunks), data)).toBe(0);
    for (const c of chunks) expect(c.buffer).toBe(data.buffer);
  });

  it('keeps sizes within min and max and the average near avgSize', () => {
    expect(chunks.length).toBeGreaterThan(200);
    for (const c of chunks.slice(0, -1)) {
      expect(c.length).toBeGreaterThan(SMALL.minSize);
      expect(c.length).toBeLessThanOrEqual(SMALL.maxSize);
    }
    expect(chunks.at(-1)!.length).toBeLessThanOrEqual(SMALL.maxSize);
    const average = data.length / chunks.length;
    expect(average).toBeGreaterThan(0.5 * SMALL.avgSize);
    expect(average).toBeLessThan(2 * SMALL.avgSize);
    // normalized chunking: most chunks land between minSize and 4 × avgSize
    const spread = chunks.filter((c) => c.length <= 4 * SMALL.avgSize).length / chunks.length;
    expect(spread).toBeGreaterThan(0.95);
  });

  it('forces a cut at maxSize when the content never matches', () => {
    // Constant bytes drive the gear hash to a fixed point; with this seed it never matches a mask.
    const zeros = new Uint8Array(300 * KiB);
    const cuts = cutsOf(chunkBuffer(zeros, table, SMALL));
    expect(cuts).toEqual([64, 128, 192, 256, 300].map((k) => k * KiB));
    expect(cuts).toEqual(referenceCuts(zeros, table, SMALL));
  });

  it('is deterministic for a seed and different for another seed', () => {
    expect(cutsOf(chunkBuffer(data, createGearTable(seed('a')), SMALL))).toEqual(cutsOf(chunks));
    const other = cutsOf(chunkBuffer(data, createGearTable(seed('b')), SMALL));
    expect(other.at(-1)).toBe(data.length);
    const shared = new Set(cutsOf(chunks));
    // a few boundaries may coincide by chance (and through the min/max rules), most must not
    expect(other.filter((c) => shared.has(c)).length).toBeLessThan(other.length / 10);
  });

  it('gives no chunks for empty input and one chunk for input up to minSize', () => {
    expect(chunkBuffer(new Uint8Array(0), table, SMALL)).toEqual([]);
    for (const n of [1, 100, SMALL.minSize - 1, SMALL.minSize]) {
      const small = randomData(n, `small ${n}`);
      const got = chunkBuffer(small, table, SMALL);
      expect(got).toHaveLength(1);
      expect(Buffer.compare(got[0]!, small)).toBe(0);
    }
  });

  it('resists shifts: an insertion near the start changes only the first chunks', () => {
    const big = randomData(8 * MiB, 'shift');
    const edited = new Uint8Array(big.length + 5);
    edited.set(big.subarray(0, 1000));
    edited.set([1, 2, 3, 4, 5], 1000);
    edited.set(big.subarray(1000), 1005);
    const before = chunkBuffer(big, table, SMALL).map(sha);
    const after = chunkBuffer(edited, table, SMALL).map(sha);
    const known = new Set(before);
    const changed = after.filter((h) => !known.has(h));
    expect(changed.length).toBeGreaterThanOrEqual(1);
    expect(changed.length).toBeLessThanOrEqual(2);
    // everything after the changed chunks is the same sequence of chunks
    expect(after.slice(changed.length)).toEqual(before.slice(before.length - (after.length - changed.length)));
    expect(after.length - changed.length).toBeGreaterThan(500);
  });

  it('also works with the default parameters', () => {
    const big = randomData(16 * MiB, 'defaults');
    const got = chunkBuffer(big, table);
    expect(cutsOf(got)).toEqual(referenceCuts(big, table, compileChunkerOptions()));
    for (const c of got.slice(0, -1)) {
      expect(c.length).toBeGreaterThan(512 * KiB);
      expect(c.length).toBeLessThanOrEqual(8 * MiB);
    }
  });
});

describe('Chunker (streaming)', () => {
  const data = randomData(4 * MiB, 'stream');
  const table = createGearTable(seed('stream'));
  const oneShot = chunkBuffer(data, table, SMALL);

  function expectSameChunks(got: readonly Uint8Array[], want: readonly Uint8Array[]): void {
    expect(got.map((c) => c.length)).toEqual(want.map((c) => c.length));
    for (let k = 0; k < want.length; k++) expect(Buffer.compare(got[k]!, want[k]!)).toBe(0);
  }

  it('gives the same chunks when fed one byte at a time', () => {
    const part = data.subarray(0, 512 * KiB);
    expectSameChunks(streamed(part, table, SMALL, () => 1), chunkBuffer(part, table, SMALL));
  });

  it('gives the same chunks when fed 7 bytes at a time', () => {
    expectSameChunks(streamed(data, table, SMALL, () => 7), oneShot);
  });

  it('gives the same chunks when fed random pieces up to 1 MiB, with empty pushes between', () => {
    for (const state of [1, 2, 3]) {
      const next = prng(state);
      const sizes = (): number => (next(4) === 0 ? next(2 * SMALL.minSize) : next(MiB + 1));
      const got = streamed(data, table, SMALL, sizes);
      expectSameChunks(got, oneShot);
      expect(Buffer.compare(concatAll(got), data)).toBe(0);
    }
  });

  it('gives the same chunks when pushes end exactly on chunk boundaries, and returns views then', () => {
    const chunker = new Chunker(table, SMALL);
    const got: Uint8Array[] = [];
    let off = 0;
    for (const c of oneShot.slice(0, -1)) {
      // the cut is after the matching byte, so a chunk is complete as soon as its last byte is in
      const out = chunker.push(data.subarray(off, off + c.length));
      expect(out).toHaveLength(1);
      expect(out[0]!.buffer).toBe(data.buffer);
      got.push(...out);
      off += c.length;
    }
    got.push(...chunker.push(data.subarray(off)));
    const last = chunker.finish();
    if (last !== null) got.push(last);
    expectSameChunks(got, oneShot);
  });

  it('copies only chunks that span pushes', () => {
    const chunker = new Chunker(table, SMALL);
    const a = data.slice(0, 100 * KiB);
    const b = data.slice(100 * KiB, 200 * KiB);
    const got = [...chunker.push(a), ...chunker.push(b)];
    const last = chunker.finish();
    expect(last).not.toBeNull();
    got.push(last!);
    expectSameChunks(got, chunkBuffer(data.subarray(0, 200 * KiB), table, SMALL));
    const spanning = got.filter((c) => c.buffer !== a.buffer && c.buffer !== b.buffer);
    expect(spanning).toHaveLength(1); // the chunk across the 100 KiB mark is the only copy
    expect(got.filter((c) => c.buffer === a.buffer).length).toBeGreaterThan(3);
    expect(got.filter((c) => c.buffer === b.buffer).length).toBeGreaterThan(3);
  });

  it('holds at most maxSize pending bytes', () => {
    const chunker = new Chunker(table, SMALL);
    const zeros = new Uint8Array(SMALL.maxSize - 1);
    expect(chunker.push(zeros)).toEqual([]);
    expect(chunker.pendingBytes).toBe(SMALL.maxSize - 1);
    const out = chunker.push(new Uint8Array(10));
    expect(out.map((c) => c.length)).toEqual([SMALL.maxSize]);
    expect(chunker.pendingBytes).toBe(9);
  });

  it('returns null from finish() when nothing is pending, and starts afresh after finish()', () => {
    const chunker = new Chunker(table, SMALL);
    expect(chunker.finish()).toBeNull();
    expect(chunker.push(new Uint8Array(0))).toEqual([]);
    expect(chunker.finish()).toBeNull();
    // a first file, not ending on a boundary, then a second file: the second must chunk as if alone
    chunker.push(randomData(5000, 'other file'));
    expect(chunker.finish()).toHaveLength(5000);
    const again = [...chunker.push(data)];
    const last = chunker.finish();
    if (last !== null) again.push(last);
    expectSameChunks(again, oneShot);
  });

  it('forgets the hash state of the previous file in finish()', () => {
    // A file whose first cut falls within the first 16 hashed bytes: a hash left over from the
    // previous file would still be in the window there and move that cut.
    const pool = randomData(8 * MiB, 'early cut');
    let early: Uint8Array | undefined;
    for (let off = 0; early === undefined && off + 3 * SMALL.minSize < pool.length; off += 97) {
      const candidate = pool.subarray(off, off + 3 * SMALL.minSize);
      if (chunkBuffer(candidate, table, SMALL)[0]!.length <= SMALL.minSize + 16) early = candidate;
    }
    expect(early).toBeDefined();
    const chunker = new Chunker(table, SMALL);
    expect(chunker.push(randomData(SMALL.minSize + 1000, 'previous file'))).toEqual([]);
    chunker.finish();
    const got = chunker.push(early!);
    const last = chunker.finish();
    if (last !== null) got.push(last);
    expect(cutsOf(got)).toEqual(cutsOf(chunkBuffer(early!, table, SMALL)));
  });

  it('rejects a table that is not 256 entries', () => {
    expectInvalid(() => new Chunker(new Uint32Array(255), SMALL), /256 entries/);
  });
});
