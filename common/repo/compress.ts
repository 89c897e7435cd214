/**
 * Blob compression: zstd (level 3, native through zstd-napi) when it saves at least 1/64 of the
 * size, else stored raw. One flag byte in front says which, so incompressible data costs one
 * byte and a fast failed attempt (zstd gives up on random data at > 1.5 GB/s here).
 * Node 20's zlib (deflate about 50 MB/s here) was too slow for the backup's hot path.
 */
import * as zstd from 'zstd-napi';
import { BulwarkError } from '../errors.js';

const RAW = 0;
const ZSTD = 1;

const compressor = new zstd.Compressor();
compressor.setParameters({ compressionLevel: 3 });
const decompressor = new zstd.Decompressor();

export function compress(plain: Uint8Array): Buffer {
  const z = compressor.compress(plain);
  if (z.length + (plain.length >> 6) < plain.length) {
    return Buffer.concat([Buffer.of(ZSTD), z]);
  }
  return Buffer.concat([Buffer.of(RAW), plain]);
}

export function decompress(data: Uint8Array, expectedLength?: number): Buffer {
  const flag = data[0];
  const body = data.subarray(1);
  let out: Buffer;
  if (flag === RAW) out = Buffer.from(body);
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
