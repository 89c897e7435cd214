/**
 * Blob compression: zstd (level 3, native through zstd-napi) when it saves at least 1/64 of the
 * size, else stored raw. One flag byte in front says which, so incompressible data costs one
 * byte. A large chunk is first probed: three samples of 16 KiB (start, middle, end); when none of
 * them compresses, the chunk is stored raw without a full attempt (zstd's own give-up on random
 * data still cost ~0.4 ns/byte, an eighth of the pipeline). Data that compresses only away from
 * the samples is stored raw: a small loss, for chunks that are mostly incompressible anyway.
 * Node 20's zlib (deflate about 50 MB/s here) was too slow for the backup's hot path.
 */
import * as zstd from 'zstd-napi';
import { BulwarkError } from '../errors.js';

const RAW = 0;
const ZSTD = 1;

/** zstd level of every blob (seal-pool.ts's workers use it too). */
export const ZSTD_LEVEL = 3;
/** Compressed only when that saves at least 1/2^MIN_SAVING_SHIFT of the size. */
export const MIN_SAVING_SHIFT = 6;

const compressor = new zstd.Compressor();
compressor.setParameters({ compressionLevel: ZSTD_LEVEL });
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
