/**
 * Schedules: `every <duration>` (from the last backup's start) or a five-field cron expression
 * (`minute hour day-of-month month day-of-week`, UTC, with `*`, lists `1,15`, ranges `1-5`, steps
 * `*\/15` and `9-17/2`; day-of-week 0-7 with 0 and 7 Sunday; when both day fields are restricted,
 * either may match, as in Vixie cron). `nextRun` is pure: the scheduler asks it when the next
 * backup of a host is due.
 */
import { parseDuration } from '../common/duration.js';
import { BulwarkError } from '../common/errors.js';

export type Schedule = { kind: 'every'; intervalMs: number } | { kind: 'cron'; fields: CronFields; text: string };

interface CronFields {
  minute: Set<number>;
  hour: Set<number>;
  dom: Set<number>;
  month: Set<number>;
  dow: Set<number>;
  domStar: boolean;
  dowStar: boolean;
}

const RANGES: Array<[string, number, number]> = [
  ['minute', 0, 59],
  ['hour', 0, 23],
  ['day of month', 1, 31],
  ['month', 1, 12],
  ['day of week', 0, 7],
];

function bad(text: string, why: string): BulwarkError {
  return new BulwarkError('INVALID_ARGUMENT', `schedule ${JSON.stringify(text)}: ${why}; write "every 1d", "every 30s" or a cron expression such as "0 2 * * *" (02:00 UTC daily)`);
}

function parseField(text: string, field: string, name: string, lo: number, hi: number): Set<number> {
  const out = new Set<number>();
  for (const part of field.split(',')) {
    const m = /^(\*|\d+(?:-\d+)?)(?:\/(\d+))?$/.exec(part);
    if (!m) throw bad(text, `the ${name} field ${JSON.stringify(part)} is not understood`);
    let from = lo;
    let to = hi;
    if (m[1] !== '*') {
      const [a, b] = m[1]!.split('-').map(Number);
      from = a!;
      to = b ?? (m[2] ? hi : a!);
    }
    const step = m[2] ? Number(m[2]) : 1;
    if (from < lo || to > hi || from > to || step < 1) throw bad(text, `the ${name} field ${JSON.stringify(part)} is out of range ${lo}-${hi}`);
    for (let v = from; v <= to; v += step) out.add(v);
  }
  return out;
}

export function parseSchedule(text: string): Schedule {
  const every = /^\s*every\s+(\S+)\s*$/i.exec(text);
  if (every) return { kind: 'every', intervalMs: parseDuration(every[1]!) };
  const parts = text.trim().split(/\s+/);
  if (parts.length !== 5) throw bad(text, 'it is neither "every <duration>" nor a five-field cron expression');
  const sets = parts.map((p, i) => parseField(text, p, RANGES[i]![0], RANGES[i]![1], RANGES[i]![2]));
  const dow = sets[4]!;
  if (dow.has(7)) dow.add(0);
  return {
    kind: 'cron',
    text,
    fields: { minute: sets[0]!, hour: sets[1]!, dom: sets[2]!, month: sets[3]!, dow, domStar: parts[2] === '*', dowStar: parts[4] === '*' },
  };
}

function cronMatches(f: CronFields, d: Date): boolean {
  if (!f.minute.has(d.getUTCMinutes()) || !f.hour.has(d.getUTCHours()) || !f.month.has(d.getUTCMonth() + 1)) return false;
  const domOk = f.dom.has(d.getUTCDate());
  const dowOk = f.dow.has(d.getUTCDay());
  if (f.domStar || f.dowStar) return domOk && dowOk;
  return domOk || dowOk;
}

/** When the next backup is due, given the start of the last one (0: never). */
export function nextRun(s: Schedule, lastStart: number): number {
  if (s.kind === 'every') return lastStart + s.intervalMs;
  // the first whole minute after the last start that matches; at most ~4 years of minutes
  let t = Math.floor(Math.max(lastStart, 0) / 60_000) * 60_000 + 60_000;
  for (let i = 0; i < 4 * 366 * 24 * 60; i++, t += 60_000) if (cronMatches(s.fields, new Date(t))) return t;
  return Number.POSITIVE_INFINITY; // e.g. "0 0 31 2 *": never
}

/** A representative interval, for planning lock horizons (the gap to the next run from now). */
export function intervalOf(s: Schedule, now: number): number {
  return s.kind === 'every' ? s.intervalMs : Math.max(60_000, nextRun(s, now) - now);
}
