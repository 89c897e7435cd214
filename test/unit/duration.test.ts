import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../common/duration.js';
import { BulwarkError } from '../../common/errors.js';

describe('parseDuration', () => {
  it.each([
    ['30s', 30_000],
    ['15m', 900_000],
    ['12h', 43_200_000],
    ['90d', 90 * 86_400_000],
    ['2w', 14 * 86_400_000],
    ['1y', 365 * 86_400_000],
    ['1d12h', 36 * 3_600_000],
    ['250ms', 250],
    [' 5s ', 5_000],
  ])('%s → %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', '5', 's', '5x', '-5s', '5s junk', '0s', '1.5h', '99999999999999999y'])('rejects %j with a usable message', (text) => {
    let caught: unknown;
    try {
      parseDuration(text);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(BulwarkError);
    expect((caught as BulwarkError).code).toBe('INVALID_ARGUMENT');
    expect((caught as BulwarkError).message).toMatch(/e\.g\. 30s/);
  });

  it('formats back to the same duration', () => {
    for (const text of ['1m30s', '90d', '1d12h', '250ms', '1y']) {
      expect(parseDuration(formatDuration(parseDuration(text)))).toBe(parseDuration(text));
    }
    expect(formatDuration(90_000)).toBe('1m30s');
  });
});
