/**
 * Content-defined chunking: cuts a file's bytes into chunks whose boundaries depend on the content,
 * so that an insertion or deletion near the start of a file changes only the chunks around the edit
 * and every later chunk deduplicates against the previous snapshot.
 *
 * The algorithm is FastCDC (Xia et al., USENIX ATC 2016; IEEE TPDS 2020):
 *   1. skip the first `minSize` bytes of a chunk without hashing them (cut-point skipping: no cut
 *      can fall there anyway; with the defaults it skips about 40% of random data);
 *   2. roll a gear hash `h = (h << 1) + gear[byte]` over the following bytes;
 *   3. until the chunk reaches `avgSize`, cut where `h & maskS == 0` (harder: avgBits + 2 bits), after
 *      it cut where `h & maskL == 0` (easier: avgBits - 2 bits) — "normalized chunking", which pulls
 *      chunk sizes towards the average;
 *   4. cut at `maxSize` if no cut point was found. The last chunk of a file is whatever is left.
 * The cut is made after the byte whose hash matched, so every chunk has at least minSize + 1 bytes
 * (except the last).
 *
 * The hash is 32 bits (JS bit operations are 32-bit; a 64-bit hash would need BigInt and be slow).
 * With a left-shifting gear hash bit k depends on the last k + 1 bytes only, so the masks take the
 * *high* bits, which depend on the last 32 bytes: a 32-byte sliding window.
 *
 * The gear table is derived from a per-repository secret seed (see createGearTable), so the same
 * file cuts differently in different repositories and an observer of chunk sizes cannot match them
 * against the chunk sizes of known files. The derivation is part of the repository format: changing
 * it moves every boundary (nothing breaks, but nothing deduplicates against older snapshots).
 */
import { createHash } from 'node:crypto';
import { BulwarkError } from '../errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** What a caller may set; anything left out takes the value of DEFAULT_CHUNKER_PARAMS. */
export interface ChunkerOptions {
  /** No chunk is shorter (except a file's last chunk). Bytes below it are skipped, not hashed. */
  minSize?: number;
  /** The size chunking aims for; a power of two. Sets the masks' bit counts. */
  avgSize?: number;
  /** No chunk is longer: a cut is forced here. Also bounds the memory a Chunker holds. */
  maxSize?: number;
}

/** Validated parameters with the masks they imply; build with compileChunkerOptions(). */
export interface ChunkerParams {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  /** High avgBits + 2 bits, as a signed 32-bit int: used while the chunk is shorter than avgSize. */
  readonly maskS: number;
  /** High avgBits - 2 bits, as a signed 32-bit int: used from avgSize up to maxSize. */
  readonly maskL: number;
}

/**
 * Defaults: chunks of 512 KiB to 8 MiB, about 1 MiB on average. A megabyte is large enough that the
 * index (one entry per chunk) stays small for terabytes of data and that per-object S3 costs are
 * amortised once chunks are packed, and small enough that an edit in a large file re-uploads
 * little. The 8 MiB ceiling bounds the memory each chunker holds.
 */
export const DEFAULT_CHUNKER_PARAMS: Readonly<Required<ChunkerOptions>> = Object.freeze({
  minSize: 512 * KiB,
  avgSize: 1 * MiB,
  maxSize: 8 * MiB,
});

/** Smallest accepted minSize: below the 32-byte hash window cut points would depend on too few bytes. */
const MIN_MIN_SIZE = 64;
/** avgSize range: at least 2^8 so maskL keeps 6 bits; at most 2^28 so maskS (30 bits) fits in 32. */
const MIN_AVG_BITS = 8;
const MAX_AVG_BITS = 28;
/** maxSize ceiling: one chunk must fit in one Uint8Array and in memory comfortably. */
const MAX_MAX_SIZE = 1024 * MiB;

/** Seed length in bytes: the repository stores a 256-bit random seed for its chunker. */
export const CHUNKER_SEED_BYTES = 32;

/**
 * Fill in defaults and check the parameters: integers, avgSize a power of two in
 * [256 B, 256 MiB], MIN_MIN_SIZE <= minSize < avgSize < maxSize <= 1 GiB. Throws INVALID_ARGUMENT.
 */
export function compileChunkerOptions(options: ChunkerOptions = {}): ChunkerParams {
  const minSize = options.minSize ?? DEFAULT_CHUNKER_PARAMS.minSize;
  const avgSize = options.avgSize ?? DEFAULT_CHUNKER_PARAMS.avgSize;
  const maxSize = options.maxSize ?? DEFAULT_CHUNKER_PARAMS.maxSize;
  const shown = `minSize ${minSize}, avgSize ${avgSize}, maxSize ${maxSize}`;
  for (const v of [minSize, avgSize, maxSize]) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw invalid(`chunker sizes must be positive whole numbers of bytes (got ${shown})`);
    }
  }
  const avgBits = Math.log2(avgSize);
  if (!Number.isInteger(avgBits) || avgBits < MIN_AVG_BITS || avgBits > MAX_AVG_BITS) {
    throw invalid(`chunker avgSize must be a power of two from 256 B to 256 MiB, e.g. 1048576 (got ${shown})`);
  }
  if (minSize < MIN_MIN_SIZE) {
    throw invalid(`chunker minSize must be at least ${MIN_MIN_SIZE} bytes (got ${shown})`);
  }
  if (!(minSize < avgSize && avgSize < maxSize)) {
    throw invalid(`chunker sizes must satisfy minSize < avgSize < maxSize, e.g. 512 KiB < 1 MiB < 8 MiB (got ${shown})`);
  }
  if (maxSize > MAX_MAX_SIZE) {
    throw invalid(`chunker maxSize must be at most 1 GiB (got ${shown})`);
  }
  return Object.freeze({
    minSize,
    avgSize,
    maxSize,
    maskS: highBits(avgBits + 2),
    maskL: highBits(avgBits - 2),
  });
}

/** The top `n` bits of a 32-bit word set, as a signed int (1 <= n <= 31). */
function highBits(n: number): number {
  return (-1 << (32 - n)) | 0;
}

function invalid(message: string): BulwarkError {
  return new BulwarkError('INVALID_ARGUMENT', message);
}

/** 256 gear values, one per byte value. Build with createGearTable(seed). */
export type GearTable = Uint32Array;

const GEAR_DOMAIN = 'bulwark/chunker/gear/v1';

/**
 * Derive the 256-entry gear table from a 32-byte seed:
 *   for k = 0..31: block_k = SHA-256(utf8("bulwark/chunker/gear/v1") || 0x00 || seed || byte(k))
 *   table[8k + j] = big-endian uint32 at block_k[4j .. 4j + 4), j = 0..7
 * The domain label keeps this use of the seed apart from any other. The seed should be secret
 * (kept in the encrypted repository config): the table is what makes chunk sizes unpredictable.
 * Throws INVALID_ARGUMENT when the seed is not 32 bytes.
 */
export function createGearTable(seed: Uint8Array): GearTable {
  if (seed.length !== CHUNKER_SEED_BYTES) {
    throw invalid(`chunker seed must be ${CHUNKER_SEED_BYTES} bytes (got ${seed.length})`);
  }
  const table = new Uint32Array(256);
  const prefix = Buffer.concat([Buffer.from(GEAR_DOMAIN, 'utf8'), Buffer.of(0), seed]);
  for (let k = 0; k < 32; k++) {
    const block = createHash('sha256').update(prefix).update(Buffer.of(k)).digest();
    for (let j = 0; j < 8; j++) table[8 * k + j] = block.readUInt32BE(4 * j);
  }
  return table;
}

/**
 * A streaming chunker for one file at a time: push() the file's bytes in pieces of any size, take
 * the chunks each call completes, and call finish() for the last one. finish() also resets the
 * chunker for the next file.
 *
 * Copies are made only when a chunk spans pushes. A chunk that lies within one pushed buffer is
 * returned as a subarray of it, and a tail that does not end a chunk is kept as a subarray until
 * later pushes complete it. So a caller must not modify a buffer once pushed (Node's stream and
 * fs reads hand out a fresh buffer each time). At most maxSize bytes of pending data are held, as
 * views of the buffers they came from.
 */
export class Chunker {
  readonly params: ChunkerParams;
  /** The gear table viewed as signed 32-bit ints, so the hot loop stays in int32 arithmetic. */
  readonly #gear: Int32Array;
  /** Bytes of the current chunk seen in earlier pushes, as views (their total is #pos). */
  #pending: Uint8Array[] = [];
  /** Length of the current chunk so far (all of it in #pending). */
  #pos = 0;
  /** Gear hash state of the current chunk (0 until hashing starts at minSize). */
  #hash = 0;

  constructor(table: GearTable, params: ChunkerParams = compileChunkerOptions()) {
    if (table.length !== 256) throw invalid(`gear table must have 256 entries (got ${table.length})`);
    this.params = params;
    this.#gear = new Int32Array(table.buffer, table.byteOffset, 256);
  }

  /** Feed the next bytes; returns the chunks they complete, in order (often none). */
  push(input: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    const len = input.length;
    if (len === 0) return out;
    const gear = this.#gear;
    const { minSize, avgSize, maxSize, maskS, maskL } = this.params;
    let h = this.#hash;
    // `base` is where the current chunk starts, as an index into `input`: negative while the
    // chunk began in an earlier push. Byte input[i] is byte (i - base) of the chunk.
    // (`0 - pos`, not `-pos`: -0 is a double in V8 and would turn all index arithmetic into floats.)
    let base = 0 - this.#pos;
    let i = 0;
    for (;;) {
      const hashFrom = base + minSize;
      if (hashFrom > i) i = hashFrom;
      if (i >= len) break;
      const normalEnd = base + avgSize < len ? base + avgSize : len;
      let cut = scan(input, gear, i, normalEnd, h, maskS);
      h = scanHash;
      if (cut < 0) {
        if (normalEnd > i) i = normalEnd; // (when the chunk passed avgSize in an earlier push, i is already beyond)
        const maxEnd = base + maxSize;
        cut = scan(input, gear, i, maxEnd < len ? maxEnd : len, h, maskL);
        h = scanHash;
        if (cut < 0) {
          if (maxEnd > len) break; // ran out of input before maxSize: wait for more
          cut = maxEnd;
        }
      }
      out.push(this.#take(input, base, cut));
      base = cut;
      i = cut;
      h = 0;
    }
    if (base < len) {
      const start = base > 0 ? base : 0;
      this.#pending.push(input.subarray(start));
      this.#pos = len - base;
    }
    this.#hash = h;
    return out;
  }

  /** The last chunk (null when no bytes are pending); resets the chunker for the next file. */
  finish(): Uint8Array | null {
    const pending = this.#pending;
    const total = this.#pos;
    this.#pending = [];
    this.#pos = 0;
    this.#hash = 0;
    if (total === 0) return null;
    return pending.length === 1 ? pending[0]! : concat(pending, total);
  }

  /** Bytes held for the chunk in progress (never more than maxSize). */
  get pendingBytes(): number {
    return this.#pos;
  }

  /** Complete the chunk [base, cut) of `input` (base < 0: it began in #pending) and reset. */
  #take(input: Uint8Array, base: number, cut: number): Uint8Array {
    if (base >= 0) return input.subarray(base, cut);
    const parts = this.#pending;
    parts.push(input.subarray(0, cut));
    const chunk = concat(parts, cut - base);
    this.#pending = [];
    this.#pos = 0;
    return chunk;
  }
}

/** The hash after the last scan() call: its second result (JS has no cheap multiple returns). */
let scanHash = 0;

/**
 * The hot loop: roll the gear hash over input[i .. end) starting from hash `h`, and return the index
 * just past the first byte where `h & mask == 0`, or -1 if there is none; the hash at that point
 * (or at `end`) is left in `scanHash`. A small separate function, unrolled eight times, because V8
 * (Node 20) optimises it far better than the same loop written inline in push(): in
 * scripts/bench/chunker.ts about 1 GB/s of hashed bytes against 0.45.
 */
function scan(input: Uint8Array, gear: Int32Array, i: number, end: number, h: number, mask: number): number {
  const end8 = end - 7;
  for (; i < end8; i += 8) {
    h = ((h << 1) + gear[input[i]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 1);
    h = ((h << 1) + gear[input[i + 1]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 2);
    h = ((h << 1) + gear[input[i + 2]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 3);
    h = ((h << 1) + gear[input[i + 3]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 4);
    h = ((h << 1) + gear[input[i + 4]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 5);
    h = ((h << 1) + gear[input[i + 5]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 6);
    h = ((h << 1) + gear[input[i + 6]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 7);
    h = ((h << 1) + gear[input[i + 7]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 8);
  }
  for (; i < end; i++) {
    h = ((h << 1) + gear[input[i]!]!) | 0;
    if ((h & mask) === 0) return found(h, i + 1);
  }
  scanHash = h;
  return -1;
}

function found(h: number, cut: number): number {
  scanHash = h;
  return cut;
}

/** Join views into one new buffer (not zero-filled first: every byte is overwritten). */
function concat(parts: readonly Uint8Array[], total: number): Uint8Array {
  const out = Buffer.allocUnsafeSlow(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Chunk a whole buffer at once. The chunks are subarrays of `buf` (no copies); their lengths are
 * the same as a Chunker fed the same bytes in any pieces would give. Empty input gives no chunks.
 */
export function chunkBuffer(buf: Uint8Array, table: GearTable, params: ChunkerParams = compileChunkerOptions()): Uint8Array[] {
  const chunker = new Chunker(table, params);
  const chunks = chunker.push(buf);
  const last = chunker.finish();
  if (last !== null) chunks.push(last);
  return chunks;
}
