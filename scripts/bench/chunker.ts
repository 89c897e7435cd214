/**
 * Chunker throughput on 256 MiB of random data, with the default parameters (512 KiB / 1 MiB /
 * 8 MiB): one-shot over the whole buffer, and streamed in 64 KiB and 1 MiB pushes. Prints
 *   - effective MB/s (input bytes per second, min-size skipping included),
 *   - scanned MB/s (bytes actually run through the gear hash per second),
 *   - chunk count and average/min/max chunk size,
 *   - SHA-256 MB/s over the same data, for reference (every chunk is hashed after chunking).
 * Prints figures and asserts nothing. Run: npx tsx scripts/bench/chunker.ts [MiB]
 */
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { Chunker, chunkBuffer, compileChunkerOptions, createGearTable } from '../../common/repo/chunker.js';

const MiB = 1024 * 1024;
const sizeMiB = Number(process.argv[2] ?? 256);
const data = new Uint8Array(sizeMiB * MiB);
for (let off = 0; off < data.length; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, data.length - off));

const params = compileChunkerOptions();
const table = createGearTable(randomBytes(32));
const mb = (bytes: number, ms: number): string => ((bytes / 1e6) / (ms / 1000)).toFixed(0).padStart(6);

function report(label: string, lengths: number[], ms: number): void {
  let min = Infinity;
  let max = 0;
  let scanned = 0;
  for (let k = 0; k < lengths.length; k++) {
    const n = lengths[k]!;
    if (n < min) min = n;
    if (n > max) max = n;
    // bytes hashed: everything past minSize (the last chunk may be shorter than minSize)
    if (n > params.minSize) scanned += n - params.minSize;
  }
  // the last chunk is cut by end of input, so leave it out of min
  const body = lengths.slice(0, -1);
  const bodyMin = body.length > 0 ? Math.min(...body) : min;
  const avg = data.length / lengths.length;
  console.log(
    `${label.padEnd(26)} effective ${mb(data.length, ms)} MB/s   scanned ${mb(scanned, ms)} MB/s   ` +
      `${lengths.length} chunks, avg ${(avg / 1024).toFixed(0)} KiB, min ${(bodyMin / 1024).toFixed(0)} KiB, max ${(max / 1024).toFixed(0)} KiB` +
      `   (${((scanned / data.length) * 100).toFixed(0)}% hashed)`,
  );
}

function oneShot(): number[] {
  return chunkBuffer(data, table, params).map((c) => c.length);
}

function streamed(piece: number): number[] {
  const chunker = new Chunker(table, params);
  const lengths: number[] = [];
  for (let off = 0; off < data.length; off += piece) {
    for (const c of chunker.push(data.subarray(off, Math.min(off + piece, data.length)))) lengths.push(c.length);
  }
  const last = chunker.finish();
  if (last !== null) lengths.push(last.length);
  return lengths;
}

function time<T>(fn: () => T): { value: T; ms: number } {
  const t0 = performance.now();
  const value = fn();
  return { value, ms: performance.now() - t0 };
}

console.log(`chunker bench: ${sizeMiB} MiB random data, min ${params.minSize} / avg ${params.avgSize} / max ${params.maxSize}, node ${process.version}`);
oneShot(); // warm up the JIT
for (let run = 1; run <= 6; run++) {
  const r = time(oneShot);
  report(`one-shot #${run}`, r.value, r.ms);
}
for (const piece of [64 * 1024, 64 * 1024, MiB, MiB]) {
  const r = time(() => streamed(piece));
  report(`streamed ${piece / 1024} KiB pushes`, r.value, r.ms);
}
{
  const r = time(() => createHash('sha256').update(data).digest());
  console.log(`${'sha256 (reference)'.padEnd(26)} ${mb(data.length, r.ms)} MB/s`);
}
