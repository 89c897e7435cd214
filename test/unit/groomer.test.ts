/**
 * The groomer's pure plan: what is garbage, and the order it is deleted in (manifests before the
 * packs they name, so a groom killed midway never leaves a snapshot whose packs are gone).
 */
import { describe, expect, it } from 'vitest';
import { type GroomSnapshot, planGroom } from '../../controller/groomer.js';
import { layout } from '../../common/repo/layout.js';

const id = (c: string) => c.repeat(64);

describe('planGroom', () => {
  it('keeps what live snapshots need and the busy hosts, and deletes manifests, then indexes, then packs', () => {
    const live: GroomSnapshot[] = [{ id: id('1'), hostId: 'a', expiresAt: 1, manifestKey: layout.snapshot('a', id('1')), packKeys: [layout.pack('a', id('a'))], indexKeys: [layout.index('a', id('e'))] }];
    const stored = [
      layout.pack('a', id('a')),
      layout.pack('a', id('b')),
      layout.pack('b', id('c')),
      layout.index('a', id('e')),
      layout.index('a', id('f')),
      layout.snapshot('a', id('1')),
      layout.snapshot('a', id('2')),
      layout.snapshot('b', id('3')),
      layout.pack('busy', id('d')),
      'config',
      layout.catalog(1),
    ];
    expect(planGroom(live, stored, new Set(['busy']))).toEqual([
      layout.snapshot('a', id('2')),
      layout.snapshot('b', id('3')),
      layout.index('a', id('f')),
      layout.pack('a', id('b')),
      layout.pack('b', id('c')),
    ]);
  });
});
