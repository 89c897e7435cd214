import { MemoryStore } from '../../common/storage/memory-store.js';
import { repoTamperSuite } from '../conformance/repo-tamper-suite.js';

repoTamperSuite('MemoryStore', { lockedStore: async () => new MemoryStore() });
