import { describe, expect, it } from 'vitest';
import { nextRun, parseSchedule } from '../../controller/schedule.js';

const at = (iso: string) => Date.parse(iso);

describe('schedules', () => {
  it('every <duration> runs that long after the last start', () => {
    expect(nextRun(parseSchedule('every 30s'), 1000)).toBe(31_000);
    expect(nextRun(parseSchedule('every 1d'), 0)).toBe(86_400_000);
  });

  it.each([
    ['0 2 * * *', '2026-11-27T01:59:00Z', '2026-11-27T02:00:00Z'],
    ['0 2 * * *', '2026-11-27T02:00:00Z', '2026-11-28T02:00:00Z'],
    ['*/15 * * * *', '2026-11-27T10:07:30Z', '2026-11-27T10:15:00Z'],
    ['30 9-17/4 * * 1-5', '2026-11-27T18:00:00Z', '2026-11-30T09:30:00Z'], // Friday evening → Monday 09:30
    ['0 0 1 * *', '2026-11-27T00:00:00Z', '2026-12-01T00:00:00Z'],
    ['0 12 * * 0', '2026-11-27T00:00:00Z', '2026-11-29T12:00:00Z'], // Sunday
    ['0 12 * * 7', '2026-11-27T00:00:00Z', '2026-11-29T12:00:00Z'], // 7 is Sunday too
    ['0 0 13 * 5', '2026-11-01T00:00:00Z', '2026-11-06T00:00:00Z'], // day 13 OR Friday (Vixie cron)
  ])('%s after %s → %s', (expr, after, next) => {
    expect(new Date(nextRun(parseSchedule(expr), at(after))).toISOString()).toBe(new Date(at(next)).toISOString());
  });

  it('an impossible date never comes', () => {
    expect(nextRun(parseSchedule('0 0 31 2 *'), at('2026-01-01T00:00:00Z'))).toBe(Number.POSITIVE_INFINITY);
  });

  it.each(['', 'daily', '* * * *', '60 * * * *', '* 24 * * *', '* * 0 * *', '*/0 * * * *', 'a b c d e', 'every soon'])('rejects %j with an example', (text) => {
    expect(() => parseSchedule(text)).toThrow(/every 1d|duration/);
  });
});
