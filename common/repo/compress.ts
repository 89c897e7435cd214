/**
 * Blob compression: zstd (native through zstd-napi, parameters ZSTD_PARAMS) when it saves at least
 * 1/64 of the size, else stored raw. One flag byte in front says which, so incompressible data costs
 * one byte. A large chunk is first probed: three samples of 16 KiB (start, middle, end); when none of
 * them compresses, the chunk is stored raw without a full attempt (zstd's own give-up on random
 * data still cost ~0.4 ns/byte, an eighth of the pipeline). Data that compresses only away from
 * the samples is stored raw: a small loss, for chunks that are mostly incompressible anyway.
 * Node 20's zlib (deflate about 50 MB/s here) was too slow for the backup's hot path.
 *
 * The parameters (issue #3: compressible data must not go through the backup slower than random
 * data). After compression a stored byte still costs ~3 ns (AES-GCM, the pack copy, the pack's
 * SHA-256, and an MD5 the agent computed until session 5), so compressing text ~5× saves ~2.5 ns per input byte, and zstd has to cost
 * less than that. Level 3 did not: 325–400 MB/s on real text here (2.5–3.1 ns/B). ZSTD_PARAMS is
 * level 1 (strategy "fast", one hash probe per position, minMatch 7 above 256 KiB) with
 * windowLog 21 (level 1's 19 misses repeats more than 512 KiB back in a chunk; 21 is what level 3
 * used, so frames need no more memory to decode) and hashLog 15 (level 1's 14; a 128 KiB table).
 * Measured (CPU time, best of 5, chunker chunks of real text: docs, man pages, C headers, JS,
 * Python, /etc, binaries; geometric mean): level 3 350–380 MB/s at 4.83–4.96×, ZSTD_PARAMS 460–525
 * MB/s at 4.53–4.64× (6–7 % more stored bytes); the storage bench's real text (208 MiB)
 * 325 → 460 MB/s, 5.09× → 4.72×. Through the backup's Packer with 2 seal workers that text went
 * from 0.84× to 1.1× the speed of random data (bench, 4 alternating runs each). Plain level 1
 * lost 9–11 % of the ratio for ~2 % more speed, and its 2^14-entry hash table fell to 2.7× on the
 * bench's synthetic text (phrases from a ~200 KB phrase book; hashLog 15: 3.55×, level 3: 4.4×);
 * hashLog 16 or level 2: +1–1.5 % ratio for 7–13 % less speed; level −1: −18 % ratio for ~10 %
 * more speed. On one core text stays slower than random data (Packer without workers: 0.79× →
 * 0.92×); to break even there zstd would have to run at ~1 GB/s on text. The frames are standard
 * zstd: blobs written at level 3 decode unchanged, and the parameters can change again without a
 * format change.
 */
import * as zstd from 'zstd-napi';
import { BulwarkError } from '../errors.js';

const RAW = 0;
const ZSTD = 1;

/** zstd parameters of every blob (seal-pool.ts's workers use them too); see the comment at the top. */
export const ZSTD_PARAMS: Readonly<zstd.CompressParameters> = Object.freeze({ compressionLevel: 1, windowLog: 21, hashLog: 15 });
/** Compressed only when that saves at least 1/2^MIN_SAVING_SHIFT of the size. */
export const MIN_SAVING_SHIFT = 6;

const compressor = new zstd.Compressor();
compressor.setParameters(ZSTD_PARAMS);
const decompressor = new zstd.Decompressor();

const FLAG_RAW = Buffer.of(RAW);
const FLAG_ZSTD = Buffer.of(ZSTD);

export function compress(plain: Uint8Array): Buffer {
  return Buffer.concat(compressParts(plain));
}

/** Probe sample size, and the chunk size from which chunks are probed (seal-pool.ts's workers use them too). */
export const SAMPLE_BYTES = 16 * 1024;
export const PROBE_FROM = 128 * 1024;

/** compress() as two pieces (flag, body), so that stored-raw data is never copied. */
export function compressParts(plain: Uint8Array): [Buffer, Uint8Array] {
  if (plain.length >= PROBE_FROM && !probe(plain)) return [FLAG_RAW, plain];
  const z = compressor.compress(plain);
  if (z.length + (plain.length >> MIN_SAVING_SHIFT) < plain.length) return [FLAG_ZSTD, z];
  return [FLAG_RAW, plain];
}

/** Does any of three samples (start, middle, end) compress by at least the minimum saving? */
function probe(plain: Uint8Array): boolean {
  const last = plain.length - SAMPLE_BYTES;
  for (const at of [0, Math.floor(last / 2), last]) {
    const z = compressor.compress(plain.subarray(at, at + SAMPLE_BYTES));
    if (z.length + (SAMPLE_BYTES >> MIN_SAVING_SHIFT) < SAMPLE_BYTES) return true;
  }
  return false;
}

export function decompress(data: Uint8Array, expectedLength?: number): Buffer {
  const flag = data[0];
  const body = data.subarray(1);
  let out: Buffer;
  // stored raw: a view, not a copy (every caller passes freshly decrypted bytes it owns)
  if (flag === RAW) out = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  else if (flag === ZSTD) {
    try {
      out = decompressor.decompress(body);
    } catch (err) {
      throw new BulwarkError('CHECKSUM_MISMATCH', 'compressed data is damaged', { cause: err });
    }
  } else throw new BulwarkError('BAD_REPOSITORY', `unknown compression flag ${flag}`);
  if (expectedLength !== undefined && out.length !== expectedLength) {
    throw new BulwarkError('CHECKSUM_MISMATCH', `decompressed to ${out.length} bytes, expected ${expectedLength}`);
  }
  return out;
}
