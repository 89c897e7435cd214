/**
 * The agent's memory settings (issue #4 asks for a peak RSS < 250 MB on a first backup of 100,000
 * files). Measured on that tree (scripts/bench/agent-memory.ts), the agent's live V8 heap is ~25–45
 * MB during the backup (session 6: the blob index and the uploaded packs' entries left V8's heap, and
 * packs are built in reused buffers), yet with Node's defaults the process peaked at ~340–400 MB
 * (docs/design.md, "Agent memory"):
 *
 * - V8 lets the old generation grow to up to ~4× its live size before a full collection when that is
 *   cheap in time. `--heap-growing-percent=30` bounds the growth to 1.3× the live size after each
 *   full GC. It is not a cap: a host with millions of files gets a proportionally larger heap instead
 *   of an out-of-memory error. It takes effect when set at run time, so the agent sets it itself,
 *   during backups only (withBoundedHeapGrowth): in a restore, whose garbage is socket buffers, it
 *   quadrupled the CPU of V8's helper threads (session 3).
 * - The young generation: two semi-spaces of up to 16 MB by default; 8 MB took ~20 MB off the peak.
 *   Read only at start-up: bin/bulwark passes it to every agent process (AGENT_NODE_FLAGS).
 * - A floor under the bound: `--initial-old-space-size=48`. With the bound alone, a backup of large
 *   files (a small live heap, its garbage mostly file data) ran a full collection every few MB of old
 *   generation: ~2 CPU-s more on 1 GiB of large files (median 14.7 against 12.4 without the bound).
 *   With the floor the same backup took 10.6–11.4 CPU-s (64 MB: 7.9–10.9, but ~248 MB on the small files).
 *   Read only at start-up, like the semi-spaces.
 * All three are the default since session 6 (~235 MB on that tree). The low-memory mode
 * (BULWARK_LOW_MEMORY=1) adds:
 * - glibc's malloc raises its mmap threshold each time a large block is freed, and later large blocks
 *   come from the brk heap. A fixed 128 KiB threshold keeps every large block in its own mapping,
 *   returned when freed, but every large buffer is then faulted in afresh (~27 % more CPU on large
 *   files). Read only at start-up: bin/bulwark sets it. Since packs are built in reused buffers it
 *   saves less (a few MB on that tree; it saved ~55 MB before).
 */
import v8 from 'node:v8';

/** Node flags of every agent process, read at start-up only (the same as bin/bulwark's). */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--initial-old-space-size=48'];
/** glibc malloc settings of the low-memory mode, in the GLIBC_TUNABLES syntax (the same as bin/bulwark's). */
export const LOW_MEMORY_GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072';
/** V8's heap growth during a backup, above the live size after a full collection. */
export const BACKUP_HEAP_GROWING_PERCENT = 30;

let bounded = 0;

/**
 * Run `fn` with V8's heap growth bounded to BACKUP_HEAP_GROWING_PERCENT above the live size (it
 * takes effect at the next GC). The flag is process-wide, so overlapping calls share it until the last
 * one ends; then V8's own heuristics are back.
 */
export async function withBoundedHeapGrowth<T>(fn: () => Promise<T>): Promise<T> {
  if (bounded++ === 0) v8.setFlagsFromString(`--heap-growing-percent=${BACKUP_HEAP_GROWING_PERCENT}`);
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
  if (!lowMemory) return { flags: AGENT_NODE_FLAGS, env };
  const tunables = env.GLIBC_TUNABLES ? `${env.GLIBC_TUNABLES}:${LOW_MEMORY_GLIBC_TUNABLES}` : LOW_MEMORY_GLIBC_TUNABLES;
  return { flags: AGENT_NODE_FLAGS, env: { ...env, BULWARK_LOW_MEMORY: '1', GLIBC_TUNABLES: tunables } };
}

/** Whether this process got bin/bulwark's start-up settings for agents (with `lowMemory`, the low-memory mode's too), for a hint when not. */
export function startedAsAgent(lowMemory: boolean): boolean {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return AGENT_NODE_FLAGS.every((f) => given.includes(f)) && (!lowMemory || (process.env.GLIBC_TUNABLES ?? '').includes(LOW_MEMORY_GLIBC_TUNABLES));
}
