/**
 * Memory settings of the agent process (issue #4: peak RSS < 250 MB on a first backup of 100,000
 * files). Measured on that tree (scripts/bench/agent-memory.ts), the agent's live V8 heap was ~60 MB
 * during the backup and 42 MB after it, but the process peaked near 470 MB:
 *
 * - V8 lets the old generation grow to up to ~4× its live size before a full collection when that is
 *   cheap in time: 215 MB of heap for 60 MB live. `--heap-growing-percent=30` bounds the growth to
 *   1.3× the live size after each full GC. It is not a cap: a host with millions of blobs in its index
 *   gets a proportionally larger heap instead of an out-of-memory error. It takes effect when set at
 *   run time, so the agent sets it itself, during a backup and only once the heap has grown past
 *   AGENT_HEAP_BOUND_FROM (withBoundedHeapGrowth): a backup of large files, whose garbage is file data
 *   outside the heap, paid ~20 % more CPU for it, and so did a restore (V8's helper threads).
 * - The young generation: two semi-spaces of up to 16 MB each by default. 8 MB holds the agent's
 *   short-lived garbage (file stats, paths, small blobs) as well: measured on that tree, 16 → 8 MB
 *   took 30 MB off the peak at the same speed. Read only at start-up: bin/bulwark passes it.
 * - Low-memory mode (BULWARK_LOW_MEMORY=1, bin/bulwark): glibc's malloc raises its mmap threshold each
 *   time a large block (a 16 MiB pack) is freed, and later large blocks then come from the brk heap.
 *   A fixed 128 KiB threshold keeps every large block in its own mapping, returned when freed: ~55 MB
 *   less at the peak on that tree (~225 instead of ~280 MB), but every large buffer is then faulted in
 *   afresh, and a first backup of 1 GiB of large files took ~27 % more CPU. Not the default.
 */
import v8 from 'node:v8';

/** glibc malloc settings of the low-memory mode, in the GLIBC_TUNABLES syntax (the same as bin/bulwark's). */
export const LOW_MEMORY_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072';
/** Node flags read at start-up only; bin/bulwark passes the same for `bulwark agent`. */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
export const AGENT_HEAP_GROWING_PERCENT = 30;

/** Heap size (V8's total) from which a backup's heap growth is bounded. */
export const AGENT_HEAP_BOUND_FROM = 96 * 1024 * 1024;

let bounded = 0;
let applied = false;
let watch: NodeJS.Timeout | undefined;

/**
 * Run `fn` with V8's heap growth bounded to AGENT_HEAP_GROWING_PERCENT above the live size once the
 * heap has grown past AGENT_HEAP_BOUND_FROM (checked twice a second; the flag takes effect at the next
 * GC). Only then: a backup of large files keeps a small heap (its garbage is file data, outside it),
 * and bounding its growth anyway cost it ~20 % more CPU in V8's helper threads for nothing; a backup
 * of many small files grows the heap with garbage, which is what the bound is for. The flag is
 * process-wide, so overlapping calls share it until the last one ends; then V8's heuristics are back.
 */
export async function withBoundedHeapGrowth<T>(fn: () => Promise<T>): Promise<T> {
  if (bounded++ === 0) {
    watch = setInterval(() => {
      if (v8.getHeapStatistics().total_heap_size < AGENT_HEAP_BOUND_FROM) return;
      v8.setFlagsFromString(`--heap-growing-percent=${AGENT_HEAP_GROWING_PERCENT}`);
      applied = true;
      clearInterval(watch);
    }, 500).unref();
  }
  try {
    return await fn();
  } finally {
    if (--bounded === 0) {
      clearInterval(watch);
      if (applied) v8.setFlagsFromString('--heap-growing-percent=0'); // 0: unset, V8 decides
      applied = false;
    }
  }
}

/**
 * The command line and environment of an agent process started by another program (benchmarks,
 * tests), as bin/bulwark makes them; `lowMemory` as BULWARK_LOW_MEMORY=1.
 */
export function agentProcess(env: NodeJS.ProcessEnv, lowMemory = false): { flags: readonly string[]; env: NodeJS.ProcessEnv } {
  if (!lowMemory) return { flags: AGENT_NODE_FLAGS, env };
  return { flags: AGENT_NODE_FLAGS, env: { ...env, GLIBC_TUNABLES: env.GLIBC_TUNABLES ? `${env.GLIBC_TUNABLES}:${LOW_MEMORY_GLIBC_TUNABLES}` : LOW_MEMORY_GLIBC_TUNABLES } };
}

/** Whether this process was started with bin/bulwark's Node flags, for a hint when it was not. */
export function agentProcessTuned(): boolean {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return AGENT_NODE_FLAGS.every((f) => given.includes(f));
}
