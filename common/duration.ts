/**
 * Durations as people write them in policies: `30s`, `15m`, `12h`, `90d`, `2w`, `1y`, and sums
 * such as `1d12h`. Short units exist so that a test can run a whole retention cycle against a real
 * bucket in a minute, with real locks that really expire.
 */
import { BulwarkError } from './errors.js';

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  // a year of retention is 365 days; S3 itself counts "Years" as 365 days too
  y: 365 * 86_400_000,
};

const PART = /(\d+)(ms|s|m|h|d|w|y)/gy;

/** Parse `90d`, `1d12h`, `30s`… into milliseconds. Throws INVALID_ARGUMENT with an example. */
export function parseDuration(text: string): number {
  const s = text.trim();
  if (s === '') throw invalid(text);
  PART.lastIndex = 0;
  let total = 0;
  let end = 0;
  for (let m = PART.exec(s); m !== null; m = PART.exec(s)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    end = PART.lastIndex;
  }
  if (end !== s.length || total <= 0 || !Number.isSafeInteger(total)) throw invalid(text);
  return total;
}

function invalid(text: string): BulwarkError {
  return new BulwarkError(
    'INVALID_ARGUMENT',
    `"${text}" is not a duration: write a number and a unit (ms, s, m, h, d, w, y), e.g. 30s, 15m, 90d or 1d12h`,
  );
}

/** Format milliseconds with the largest units that divide it: 90000 → "1m30s". */
export function formatDuration(ms: number): string {
  if (ms <= 0) return '0s';
  const order = ['y', 'd', 'h', 'm', 's', 'ms'] as const;
  let rest = Math.round(ms);
  let out = '';
  for (const unit of order) {
    const size = UNIT_MS[unit]!;
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out;
}
