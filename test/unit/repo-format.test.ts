import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { decodeIndex, encodeIndex } from '../../common/repo/blob-index.js';
import { deriveHostKeys } from '../../common/repo/keys.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { repoTamperSuite } from '../conformance/repo-tamper-suite.js';

repoTamperSuite('MemoryStore', { lockedStore: async () => new MemoryStore() });


describe('index objects', () => {
  it('encode and decode 200,000 entries across many packs (a first backup of many small files)', () => {
    const keys = deriveHostKeys(randomBytes(32), 'h');
    const packs = Array.from({ length: 50 }, () => ({
      id: randomBytes(32).toString('hex'),
      entries: Array.from({ length: 4000 }, (_, i) => ({ type: (i % 7 === 0 ? 'tree' : 'data') as 'tree' | 'data', id: randomBytes(32), offset: i * 100, length: 100, rawLength: 90 + (i % 10) })),
    }));
    const back = decodeIndex(keys, encodeIndex(keys, packs));
    expect(back.map((p) => p.id)).toEqual(packs.map((p) => p.id));
    expect(back.reduce((n, p) => n + p.entries.length, 0)).toBe(200_000);
    expect(back[17]!.entries[1234]).toEqual(packs[17]!.entries[1234]);
  });
});
