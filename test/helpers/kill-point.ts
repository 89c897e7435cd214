/**
 * The child side of the kill -9 tests (test/helpers/kill-child.ts is the parent side): a fixture
 * calls `step(what)` just before each step of the stage under test — a storage call through
 * `tapStore`, or a file moved into place — and the process SIGKILLs itself after step
 * KILL_AT_STEP (0: at `arm()`), KILL_JITTER_MS later (0: before the step starts). Killing from
 * inside puts the kill exactly where the seed says, whatever the machine's load: a parent's kill
 * arrives a variable time late, and a burst of quick steps would finish first. Each step is also
 * printed as "STEP <what>" (stdout to a pipe is synchronous in Node).
 */
import type { BlobStore } from '../../common/storage/blob-store.js';

const killAt = process.env.KILL_AT_STEP === undefined ? undefined : Number(process.env.KILL_AT_STEP);
const jitterMs = Number(process.env.KILL_JITTER_MS ?? 0);
let armed = false;
let steps = 0;

function die(): void {
  if (jitterMs === 0) process.kill(process.pid, 'SIGKILL');
  else setTimeout(() => process.kill(process.pid, 'SIGKILL'), jitterMs);
}

/** Start counting steps (after the fixture's own set-up). */
export function arm(): void {
  armed = true;
  if (killAt === 0) die();
}

export function step(what: string): void {
  if (!armed) return;
  process.stdout.write(`STEP ${what}\n`);
  if (++steps === killAt) die();
}

/** A BlobStore that takes a step before each call of the chosen methods. */
export function tapStore(inner: BlobStore, methods: ReadonlyArray<keyof BlobStore>): BlobStore {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = v as (...args: unknown[]) => unknown;
      if (!methods.includes(prop as keyof BlobStore)) return fn.bind(target);
      return (...args: unknown[]) => {
        step(`${String(prop)} ${String(args[0])}`);
        return fn.apply(target, args);
      };
    },
  });
}
