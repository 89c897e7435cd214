/**
 * The agent's low-memory mode (BULWARK_LOW_MEMORY=1; issue #4 asks for a peak RSS < 250 MB on a
 * first backup of 100,000 files). Measured on that tree (scripts/bench/agent-memory.ts), the agent's
 * live V8 heap was ~60 MB during the backup and 42 MB after it, yet the process peaked at ~440–470 MB.
 * Three settings bring it to ~225–234 MB; each costs CPU, and together they made a first backup of
 * 1 GiB of large files 37 % slower (16.5 instead of 12.1 s in the backup benchmark, behind restic), so
 * they are a mode for small hosts, not the default:
 *
 * - V8 lets the old generation grow to up to ~4× its live size before a full collection when that is
 *   cheap in time: 215 MB of heap for 60 MB live. `--heap-growing-percent=30` bounds the growth to
 *   1.3× the live size after each full GC. It is not a cap: a host with millions of blobs in its index
 *   gets a proportionally larger heap instead of an out-of-memory error. It takes effect when set at
 *   run time, so the agent sets it itself, during backups only (withBoundedHeapGrowth): in a restore,
 *   whose garbage is the S3 client's socket buffers, it quadrupled the CPU of V8's helper threads.
 * - The young generation: two semi-spaces of up to 16 MB by default; 8 MB took 30 MB off the peak at
 *   the same speed on that tree. Read only at start-up: bin/bulwark passes it.
 * - glibc's malloc raises its mmap threshold each time a large block (a 16 MiB pack) is freed, and
 *   later large blocks come from the brk heap. A fixed 128 KiB threshold keeps every large block in
 *   its own mapping, returned when freed (~55 MB less at the peak), but every large buffer is then
 *   faulted in afresh (~27 % more CPU on large files). Read only at start-up: bin/bulwark sets it.
 */
import v8 from 'node:v8';

/** glibc malloc settings of the low-memory mode, in the GLIBC_TUNABLES syntax (the same as bin/bulwark's). */
export const LOW_MEMORY_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072';
/** Node flags of the low-memory mode, read at start-up only (the same as bin/bulwark's). */
export const LOW_MEMORY_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
export const LOW_MEMORY_HEAP_GROWING_PERCENT = 30;

let bounded = 0;

/**
 * Run `fn` with V8's heap growth bounded to LOW_MEMORY_HEAP_GROWING_PERCENT above the live size (it
 * takes effect at the next GC). The flag is process-wide, so overlapping calls share it until the last
 * one ends; then V8's own heuristics are back.
 */
export async function withBoundedHeapGrowth<T>(fn: () => Promise<T>): Promise<T> {
  if (bounded++ === 0) v8.setFlagsFromString(`--heap-growing-percent=${LOW_MEMORY_HEAP_GROWING_PERCENT}`);
  try {
    return await fn();
  } finally {
    if (--bounded === 0) v8.setFlagsFromString('--heap-growing-percent=0'); // 0: unset, V8 decides
  }
}

/**
 * The command line and environment of an agent process started by another program (benchmarks), as
 * bin/bulwark makes them: with `lowMemory`, as for BULWARK_LOW_MEMORY=1.
 */
export function agentProcess(env: NodeJS.ProcessEnv, lowMemory: boolean): { flags: readonly string[]; env: NodeJS.ProcessEnv } {
  if (!lowMemory) return { flags: [], env };
  const tunables = env.GLIBC_TUNABLES ? `${env.GLIBC_TUNABLES}:${LOW_MEMORY_GLIBC_TUNABLES}` : LOW_MEMORY_GLIBC_TUNABLES;
  return { flags: LOW_MEMORY_NODE_FLAGS, env: { ...env, BULWARK_LOW_MEMORY: '1', GLIBC_TUNABLES: tunables } };
}

/** Whether this process got the start-up part of the low-memory mode (bin/bulwark), for a hint when not. */
export function lowMemoryProcess(): boolean {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return LOW_MEMORY_NODE_FLAGS.every((f) => given.includes(f)) && (process.env.GLIBC_TUNABLES ?? '').includes(LOW_MEMORY_GLIBC_TUNABLES);
}
