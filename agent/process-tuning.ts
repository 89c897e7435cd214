/**
 * Memory settings of the agent process (issue #4: peak RSS < 250 MB on a first backup of 100,000
 * files). Measured on that tree (scripts/bench/agent-memory.ts), the agent's live V8 heap was ~60 MB
 * during the backup and 42 MB after it, but the process peaked near 500 MB:
 *
 * - V8 lets the old generation grow to up to ~4× its live size before a full collection when that is
 *   cheap in time: 215 MB of heap for 60 MB live. `--heap-growing-percent=30` bounds the growth to
 *   1.3× the live size after each full GC. It is not a cap: a host with millions of blobs in its index
 *   gets a proportionally larger heap instead of an out-of-memory error. Unlike the other flags it
 *   takes effect when set at run time, so the agent sets it itself, for the duration of each backup
 *   (withBoundedHeapGrowth): in a restore, whose garbage is mostly the S3 client's socket buffers,
 *   it quadrupled the CPU time of V8's helper threads and slowed the restore by ~20 %.
 * - The young generation: two semi-spaces of up to 16 MB each by default. 8 MB holds the agent's
 *   short-lived garbage (file stats, paths, small blobs) as well: measured on that tree, 16 → 8 MB
 *   took 30 MB off the peak at the same speed, and 4 MB another 6 MB for 6 % more time. This one is
 *   read only at start-up: bin/bulwark passes it on the command line.
 * - glibc's malloc raises its mmap threshold each time a large block (a 16 MiB pack, a LevelDB
 *   memtable) is freed, after which such blocks come from the brk heap, where small long-lived
 *   allocations pin them: 157 MB of brk heap after the backup. A fixed threshold of 128 KiB keeps
 *   large blocks in their own mappings, returned to the system when freed (82 MB → 17 MB of brk
 *   heap). glibc reads GLIBC_TUNABLES at start-up only: bin/bulwark sets it.
 *
 * The cost is CPU: more frequent full collections on the main thread (docs/benchmarks.md has the
 * figures).
 */
import v8 from 'node:v8';

/** glibc malloc settings, in the GLIBC_TUNABLES syntax; bin/bulwark sets the same for `bulwark agent`. */
export const AGENT_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072';
/** Node flags read at start-up only; bin/bulwark passes the same for `bulwark agent`. */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
export const AGENT_HEAP_GROWING_PERCENT = 30;

let bounded = 0;

/**
 * Run `fn` with V8's heap growth bounded to AGENT_HEAP_GROWING_PERCENT above the live size (it takes
 * effect at the next GC; the flag is process-wide, so nested and overlapping calls keep it until the
 * last one ends, then V8's own heuristics are back).
 */
export async function withBoundedHeapGrowth<T>(fn: () => Promise<T>): Promise<T> {
  if (bounded++ === 0) v8.setFlagsFromString(`--heap-growing-percent=${AGENT_HEAP_GROWING_PERCENT}`);
  try {
    return await fn();
  } finally {
    if (--bounded === 0) v8.setFlagsFromString('--heap-growing-percent=0'); // 0: unset, V8 decides
  }
}

/** The environment of an agent process started by another program (benchmarks, tests), as bin/bulwark makes it. */
export function agentProcessEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, GLIBC_TUNABLES: env.GLIBC_TUNABLES ? `${env.GLIBC_TUNABLES}:${AGENT_GLIBC_TUNABLES}` : AGENT_GLIBC_TUNABLES };
}

/** Whether this process was started with the settings above (bin/bulwark), for a hint when it was not. */
export function agentProcessTuned(): boolean {
  const semi = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
  return (process.env.GLIBC_TUNABLES ?? '').includes('glibc.malloc.mmap_threshold') && semi !== undefined && semi.space_size <= 8 * 1024 * 1024;
}
