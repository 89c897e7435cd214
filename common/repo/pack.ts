/**
 * Blobs and packs.
 *
 * A blob is one chunk of file data or one encoded tree. Stored form:
 *   seal(hostKeys.enc, compress(plaintext), aad = blob id)
 * The blob id (HMAC-SHA256 of the plaintext under hostKeys.id) is bound as associated data, so a
 * blob cannot be moved under another id, and after decryption the plaintext is hashed again and
 * compared with the id: every byte restored is verified.
 *
 * A pack is many blobs followed by their header, so that it is self-describing (the index objects
 * are only a cache of pack headers and can be rebuilt from the packs):
 *   blob₀ ‖ blob₁ ‖ … ‖ seal(enc, header, aad "bulwark/v1/pack-header") ‖ u32le(sealed header length) ‖ "BWP1"
 * header = u32le(count) then per blob: u8 type, id[32], u32le offset, u32le length, u32le rawLength.
 * The pack's id is the SHA-256 of all its bytes.
 */
import { BulwarkError } from '../errors.js';
import { compressParts, decompress } from './compress.js';
import { blobId, contentId, equalBytes, open, seal, sealParts } from './crypto.js';
import type { HostKeys } from './keys.js';

export type BlobType = 'data' | 'tree';

export interface PackEntry {
  type: BlobType;
  id: Buffer;
  offset: number;
  /** Stored (sealed) length. */
  length: number;
  /** Plaintext length. */
  rawLength: number;
}

const MAGIC = Buffer.from('BWP1');
const HEADER_AAD = Buffer.from('bulwark/v1/pack-header');
export const ENTRY_BYTES = 1 + 32 + 4 + 4 + 4;

export function sealBlob(keys: HostKeys, id: Uint8Array, plaintext: Uint8Array): Buffer {
  return Buffer.concat(sealBlobParts(keys, id, plaintext));
}

/** sealBlob() as pieces whose concatenation is the sealed blob: PackBuilder copies each byte once, into the pack. */
export function sealBlobParts(keys: HostKeys, id: Uint8Array, plaintext: Uint8Array): Buffer[] {
  return sealParts(keys.enc, compressParts(plaintext), id);
}

/** Decrypt, decompress and verify a stored blob against its id. CHECKSUM_MISMATCH if not genuine. */
export function openBlob(keys: HostKeys, id: Uint8Array, stored: Uint8Array, rawLength?: number): Buffer {
  const plain = decompress(open(keys.enc, stored, id), rawLength);
  if (!equalBytes(blobId(keys.id, plain), id)) {
    throw new BulwarkError('CHECKSUM_MISMATCH', `blob ${Buffer.from(id).toString('hex')} does not hash to its id`);
  }
  return plain;
}

export function encodeEntries(entries: readonly PackEntry[]): Buffer {
  const out = Buffer.alloc(4 + entries.length * ENTRY_BYTES);
  out.writeUInt32LE(entries.length, 0);
  let o = 4;
  for (const e of entries) {
    out[o] = e.type === 'data' ? 0 : 1;
    e.id.copy(out, o + 1);
    out.writeUInt32LE(e.offset, o + 33);
    out.writeUInt32LE(e.length, o + 37);
    out.writeUInt32LE(e.rawLength, o + 41);
    o += ENTRY_BYTES;
  }
  return out;
}

/** The number of entries in encoded entries (encodeEntries), checked against their length. */
export function encodedEntryCount(encoded: Buffer): number {
  const n = encoded.length >= 4 ? encoded.readUInt32LE(0) : -1;
  if (n < 0 || encoded.length !== 4 + n * ENTRY_BYTES) throw new BulwarkError('INTERNAL', 'encoded pack entries have the wrong length');
  return n;
}

export function decodeEntries(buf: Buffer): PackEntry[] {
  if (buf.length < 4) throw new BulwarkError('CHECKSUM_MISMATCH', 'pack header too short');
  const n = buf.readUInt32LE(0);
  if (buf.length !== 4 + n * ENTRY_BYTES) throw new BulwarkError('CHECKSUM_MISMATCH', 'pack header has the wrong length');
  const out: PackEntry[] = [];
  for (let i = 0, o = 4; i < n; i++, o += ENTRY_BYTES) {
    const t = buf[o];
    if (t !== 0 && t !== 1) throw new BulwarkError('CHECKSUM_MISMATCH', `unknown blob type ${t}`);
    out.push({
      type: t === 0 ? 'data' : 'tree',
      id: Buffer.from(buf.subarray(o + 1, o + 33)),
      offset: buf.readUInt32LE(o + 33),
      length: buf.readUInt32LE(o + 37),
      rawLength: buf.readUInt32LE(o + 41),
    });
  }
  return out;
}

/**
 * Size of a buffer to build packs of `packSize` in (and reuse): a pack closes once it passes
 * packSize, by one blob and its header, which 1/8 more nearly always holds.
 */
export function packBufferSize(packSize: number): number {
  return packSize + (packSize >> 3);
}

/** Capacity of a PackBuilder given no buffer; it doubles as the pack grows. */
const INITIAL_BYTES = 1024 * 1024;

/**
 * Accumulates sealed blobs into one pack, copying each byte once, at once, into one buffer: the
 * pack's bytes. The caller may hand it that buffer (the backup's Packer reuses a few of pack size,
 * so a backup does not allocate and free a 16 MiB pack, and the slabs it was built from, per pack:
 * glibc kept those freed blocks, ~34 MB of a first backup of 100,000 small files, and raised its
 * mmap threshold on each). A pack that outgrows the buffer moves to a larger one.
 */
export class PackBuilder {
  private buf: Buffer;
  private readonly entries: PackEntry[] = [];
  private bytes = 0;

  /** `into`: the buffer to build the pack in (its contents are overwritten); else one is allocated. */
  constructor(into?: Buffer) {
    this.buf = into ?? Buffer.allocUnsafeSlow(INITIAL_BYTES);
  }

  get size(): number {
    return this.bytes;
  }
  get count(): number {
    return this.entries.length;
  }

  /** Append a sealed blob, whole or as pieces (sealBlobParts). */
  add(type: BlobType, id: Buffer, sealed: Uint8Array | readonly Uint8Array[], rawLength: number): void {
    const pieces = Array.isArray(sealed) ? (sealed as readonly Uint8Array[]) : [sealed as Uint8Array];
    let length = 0;
    for (const p of pieces) length += p.length;
    this.reserve(length);
    let at = this.bytes;
    for (const p of pieces) {
      this.buf.set(p, at);
      at += p.length;
    }
    this.entries.push({ type, id, offset: this.bytes, length, rawLength });
    this.bytes += length;
  }

  /** Close the pack: returns its bytes, its id (SHA-256 of the bytes) and its entries. */
  finish(keys: HostKeys): { id: string; bytes: Buffer; entries: PackEntry[] } {
    const { bytes, entries } = this.finishBytes(keys);
    return { id: contentId(bytes), bytes, entries };
  }

  /**
   * Close the pack without hashing it (the caller computes its id, e.g. on a worker thread). `bytes`
   * is a view of the builder's buffer, from its start; `encoded` is the header's plaintext, the
   * entries as encodeEntries() gives them.
   */
  finishBytes(keys: HostKeys): { bytes: Buffer; entries: PackEntry[]; encoded: Buffer } {
    const encoded = encodeEntries(this.entries);
    const header = seal(keys.enc, encoded, HEADER_AAD);
    this.reserve(header.length + 8);
    header.copy(this.buf, this.bytes);
    let end = this.bytes + header.length;
    end = this.buf.writeUInt32LE(header.length, end);
    end += MAGIC.copy(this.buf, end);
    return { bytes: this.buf.subarray(0, end), entries: this.entries, encoded };
  }

  /** Room for `n` more bytes: a buffer at least twice as large when the current one is short. */
  private reserve(n: number): void {
    if (this.bytes + n <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.bytes + n, 2 * this.buf.length));
    this.buf.copy(next, 0, 0, this.bytes);
    this.buf = next;
  }
}

/** Parse the header at the end of a whole pack (verified against its id first by the caller). */
export function parsePack(keys: HostKeys, bytes: Uint8Array): PackEntry[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 8 || !b.subarray(b.length - 4).equals(MAGIC)) throw new BulwarkError('CHECKSUM_MISMATCH', 'not a Bulwark pack (no trailer)');
  const hlen = b.readUInt32LE(b.length - 8);
  if (hlen > b.length - 8) throw new BulwarkError('CHECKSUM_MISMATCH', 'pack header length out of range');
  const entries = decodeEntries(open(keys.enc, b.subarray(b.length - 8 - hlen, b.length - 8), HEADER_AAD));
  const end = b.length - 8 - hlen;
  for (const e of entries) {
    if (e.offset + e.length > end) throw new BulwarkError('CHECKSUM_MISMATCH', 'pack header points past the blobs');
  }
  return entries;
}
