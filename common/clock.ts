/**
 * Time, injectable. Code reads "now" through a Clock so tests can move it. Lock dates are
 * compared with the bucket's clock (the `Date` header, see storage/doctor.ts), not this one.
 */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock tests can set and advance. */
export class ManualClock implements Clock {
  constructor(private ms: number = Date.now()) {}
  now(): number {
    return this.ms;
  }
  advance(ms: number): void {
    this.ms += ms;
  }
  set(ms: number): void {
    this.ms = ms;
  }
}
