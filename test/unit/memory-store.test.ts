import { ManualClock } from '../../common/clock.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { blobStoreConformance } from '../conformance/blob-store-suite.js';

// One clock for every store the suite makes: `pass` moves it, so locks expire without waiting.
const clock = new ManualClock(Date.now());

blobStoreConformance('MemoryStore', {
  lockedStore: async () => new MemoryStore({ clock }),
  plainStore: async () => new MemoryStore({ clock, objectLock: false }),
  pass: async (ms) => clock.advance(ms),
  lockMs: 5_000,
});
