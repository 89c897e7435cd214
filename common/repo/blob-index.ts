/**
 * The blob index: which pack holds each blob, at which offset. Built in memory from index objects
 * (hosts/<h>/index/<id>), which are a cache of pack headers: when one is missing or damaged the
 * entries can be rebuilt from the packs themselves.
 *
 * Index object = seal(enc, compress(body), aad "bulwark/v1/index"), named by SHA-256 of the
 * stored bytes. body = "BWI1" ‖ u32le(packs) ‖ pack ids[32]… ‖ u32le(entries) ‖ per entry:
 * u32le(pack number) then a pack-header entry (pack.ts).
 */
import { BulwarkError } from '../errors.js';
import { compress, decompress } from './compress.js';
import { open, seal } from './crypto.js';
import type { HostKeys } from './keys.js';
import { type BlobType, ENTRY_BYTES, type PackEntry, decodeEntries, encodeEntries, encodedEntryCount } from './pack.js';

export interface BlobLocation {
  pack: string;
  type: BlobType;
  offset: number;
  length: number;
  rawLength: number;
}

const MAGIC = Buffer.from('BWI1');
const AAD = Buffer.from('bulwark/v1/index');

/**
 * In memory, a blob costs ~60 bytes here, in typed arrays outside V8's heap: an open-addressing
 * hash table of entry numbers (blob ids are HMAC outputs, so their first bytes are the hash), and
 * per entry its id and location. A Map of hex strings to location objects cost ~250 bytes per blob
 * in V8's heap (a first backup of 100,000 small files: 25 of its 42 MB live), and every full
 * collection had to mark those 200,000 objects.
 */
export class BlobIndex {
  private readonly packNo = new Map<string, number>(); // pack id → its number here
  private readonly packIds: string[] = []; // number → pack id
  private readonly packBlobs = new Map<string, number>(); // pack id → blobs it holds here (insertion order: packs())
  private count = 0;
  private ids = new Uint8Array(0); // entry i: bytes [32i, 32i + 32)
  private loc = new Uint32Array(0); // entry i: pack number, offset, length, rawLength at [4i, 4i + 4)
  private types = new Uint8Array(0); // entry i: 0 data, 1 tree
  private slots = new Int32Array(16); // entry number + 1, 0 = empty; length a power of 2, at most half full
  private readonly probe = Buffer.alloc(32);

  /**
   * @param rank When a blob is in two packs (re-protection wrote it afresh), the pack with the
   *   higher rank holds it; the agent ranks packs by their known lock end, so after a restart the
   *   index points at the re-protected copy rather than the old pack whose lock is lapsing.
   *   Without a rank (or on a tie) the first pack added keeps it.
   */
  constructor(private readonly rank?: (pack: string) => number) {}

  get size(): number {
    return this.count;
  }

  get packCount(): number {
    return this.packBlobs.size;
  }

  addPack(pack: string, entries: readonly PackEntry[]): void {
    let n = this.packNo.get(pack);
    if (n === undefined) {
      n = this.packIds.length;
      this.packIds.push(pack);
      this.packNo.set(pack, n);
      this.packBlobs.set(pack, 0);
    }
    for (const e of entries) {
      if (e.id.length !== 32) throw new BulwarkError('CHECKSUM_MISMATCH', `blob id of ${e.id.length} bytes in pack ${pack}`);
      const slot = this.find(e.id);
      let i = this.slots[slot]! - 1;
      if (i >= 0) {
        // the same blob in two packs: keep the first, unless the rank prefers the newcomer
        const had = this.packIds[this.loc[4 * i]!]!;
        if (!this.rank || had === pack || this.rank(pack) <= this.rank(had)) continue;
        this.packBlobs.set(had, (this.packBlobs.get(had) ?? 1) - 1);
      } else {
        i = this.append(e.id);
        this.slots[slot] = i + 1;
        if (2 * this.count > this.slots.length) this.rehash(2 * this.slots.length);
      }
      this.loc[4 * i] = n;
      this.loc[4 * i + 1] = e.offset;
      this.loc[4 * i + 2] = e.length;
      this.loc[4 * i + 3] = e.rawLength;
      this.types[i] = e.type === 'data' ? 0 : 1;
      this.packBlobs.set(pack, this.packBlobs.get(pack)! + 1);
    }
  }

  /** Where the blob with this id (64 hex digits) is; undefined if unknown, or not an id. */
  get(id: string): BlobLocation | undefined {
    const i = this.entryOf(id);
    if (i < 0) return undefined;
    return {
      pack: this.packIds[this.loc[4 * i]!]!,
      type: this.types[i] === 0 ? 'data' : 'tree',
      offset: this.loc[4 * i + 1]!,
      length: this.loc[4 * i + 2]!,
      rawLength: this.loc[4 * i + 3]!,
    };
  }

  has(id: string): boolean {
    return this.entryOf(id) >= 0;
  }

  hasPack(pack: string): boolean {
    return this.packBlobs.has(pack);
  }

  packs(): IterableIterator<string> {
    return this.packBlobs.keys();
  }

  /** Forget every blob of these packs (e.g. packs that must be re-protected, or are gone). */
  dropPacks(packs: ReadonlySet<string>): void {
    const gone = new Set<number>();
    for (const p of packs) {
      const n = this.packNo.get(p);
      if (n === undefined) continue;
      gone.add(n);
      this.packNo.delete(p);
      this.packBlobs.delete(p);
    }
    if (gone.size === 0) return;
    // keep the other entries, in order, then index them afresh
    let kept = 0;
    for (let i = 0; i < this.count; i++) {
      if (gone.has(this.loc[4 * i]!)) continue;
      if (kept !== i) {
        this.ids.copyWithin(32 * kept, 32 * i, 32 * i + 32);
        this.loc.copyWithin(4 * kept, 4 * i, 4 * i + 4);
        this.types[kept] = this.types[i]!;
      }
      kept++;
    }
    this.count = kept;
    this.rehash(this.slots.length);
  }

  /** Calls `fn` with each blob's id, as 32 bytes at `at` in `ids` (valid during the call only). */
  forEachId(fn: (ids: Uint8Array, at: number) => void): void {
    for (let i = 0; i < this.count; i++) fn(this.ids, 32 * i);
  }

  /** The entry number of a hex id, or -1. */
  private entryOf(id: string): number {
    if (id.length !== 64 || this.probe.write(id, 'hex') !== 32) return -1;
    return this.slots[this.find(this.probe)]! - 1;
  }

  /** The slot holding the id at `at` in `bytes`, or the empty slot where it would go. */
  private find(bytes: Uint8Array, at = 0): number {
    const mask = this.slots.length - 1;
    let s = ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) & mask;
    for (;;) {
      const i = this.slots[s]! - 1;
      if (i < 0 || this.idEquals(i, bytes, at)) return s;
      s = (s + 1) & mask;
    }
  }

  private idEquals(i: number, bytes: Uint8Array, at: number): boolean {
    const ids = this.ids;
    const o = 32 * i;
    for (let k = 0; k < 32; k++) if (ids[o + k] !== bytes[at + k]) return false;
    return true;
  }

  /** A new entry for this id (its location is set by the caller); grows the arrays by doubling. */
  private append(id: Uint8Array): number {
    const i = this.count++;
    if (i === this.types.length) {
      const cap = Math.max(1024, 2 * i);
      const ids = new Uint8Array(32 * cap);
      ids.set(this.ids);
      this.ids = ids;
      const loc = new Uint32Array(4 * cap);
      loc.set(this.loc);
      this.loc = loc;
      const types = new Uint8Array(cap);
      types.set(this.types);
      this.types = types;
    }
    this.ids.set(id, 32 * i);
    return i;
  }

  private rehash(length: number): void {
    this.slots = new Int32Array(length);
    for (let i = 0; i < this.count; i++) this.slots[this.find(this.ids, 32 * i)] = i + 1;
  }
}

/**
 * An index object of these packs. A pack's entries are objects, or encoded as in its header
 * (pack.ts encodeEntries), which is how a backup keeps the packs it uploaded.
 */
export function encodeIndex(keys: HostKeys, packs: ReadonlyArray<{ id: string; entries: readonly PackEntry[] | Buffer }>): Buffer {
  // one allocation, filled in place: no per-entry buffers, no argument spreading (a backup of
  // 100,000 small files has 100,000 entries)
  const encoded = packs.map((p) => (Buffer.isBuffer(p.entries) ? p.entries : encodeEntries(p.entries as readonly PackEntry[])));
  const count = encoded.reduce((n, e) => n + encodedEntryCount(e), 0);
  const body = Buffer.alloc(4 + 4 + packs.length * 32 + 4 + count * (4 + ENTRY_BYTES));
  MAGIC.copy(body, 0);
  body.writeUInt32LE(packs.length, 4);
  let o = 8;
  for (const p of packs) {
    body.write(p.id, o, 32, 'hex');
    o += 32;
  }
  body.writeUInt32LE(count, o);
  o += 4;
  encoded.forEach((e, i) => {
    for (let k = 0, n = encodedEntryCount(e); k < n; k++) {
      body.writeUInt32LE(i, o);
      e.copy(body, o + 4, 4 + k * ENTRY_BYTES, 4 + (k + 1) * ENTRY_BYTES);
      o += 4 + ENTRY_BYTES;
    }
  });
  return seal(keys.enc, compress(body), AAD);
}

export function decodeIndex(keys: HostKeys, stored: Uint8Array): Array<{ id: string; entries: PackEntry[] }> {
  const body = decompress(open(keys.enc, stored, AAD));
  if (body.length < 12 || !body.subarray(0, 4).equals(MAGIC)) throw new BulwarkError('CHECKSUM_MISMATCH', 'not a Bulwark index');
  const np = body.readUInt32LE(4);
  let o = 8;
  const packs: Array<{ id: string; entries: PackEntry[] }> = [];
  for (let i = 0; i < np; i++, o += 32) packs.push({ id: body.subarray(o, o + 32).toString('hex'), entries: [] });
  const ne = body.readUInt32LE(o);
  o += 4;
  if (body.length !== o + ne * (4 + ENTRY_BYTES)) throw new BulwarkError('CHECKSUM_MISMATCH', 'index has the wrong length');
  for (let i = 0; i < ne; i++, o += 4 + ENTRY_BYTES) {
    const p = packs[body.readUInt32LE(o)];
    if (!p) throw new BulwarkError('CHECKSUM_MISMATCH', 'index entry names a pack it does not list');
    const one = Buffer.alloc(4 + ENTRY_BYTES);
    one.writeUInt32LE(1);
    body.copy(one, 4, o + 4, o + 4 + ENTRY_BYTES);
    p.entries.push(decodeEntries(one)[0]!);
  }
  return packs;
}
