/**
 * A fixed set of worker threads running one plain-JavaScript source (an `eval` worker, so it starts
 * the same way under tsx, compiled JS and vitest), each request sent to the least loaded worker
 * and answered by a message carrying the request's `seq`. Used by the backup's SealPool and the
 * restore's WritePool. A worker that fails or exits fails every request in flight and every
 * later one; `close()` stops the workers.
 */
import { Worker } from 'node:worker_threads';
import { BulwarkError } from './errors.js';

interface Waiting<R> {
  resolve: (r: R) => void;
  reject: (e: Error) => void;
  worker: number;
}

export class WorkerPool<R extends { seq: number; error?: string }> {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly waiting = new Map<number, Waiting<R>>();
  private seq = 0;
  private failure: Error | undefined;
  private closed = false;

  /** @param what names the pool in errors ("seal", "restore"). */
  constructor(
    source: string,
    workerData: unknown,
    size: number,
    private readonly what: string,
  ) {
    if (!(size >= 1)) throw new BulwarkError('INVALID_ARGUMENT', `a ${what} pool needs at least one worker, not ${size}`);
    for (let i = 0; i < size; i++) {
      const w = new Worker(source, { eval: true, workerData });
      w.unref();
      w.on('message', (m: R) => this.onReply(m));
      w.on('error', (err) => this.fail(new BulwarkError('INTERNAL', `${what} worker failed: ${err.message}`, { cause: err })));
      w.on('exit', (code) => {
        if (!this.closed) this.fail(new BulwarkError('INTERNAL', `${what} worker exited (code ${code})`));
      });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  /** Send `msg` (plus its `seq`) to the least loaded worker, moving `transfer`; a reply with `error` rejects. */
  request(msg: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new BulwarkError('ABORTED', `${this.what} pool closed`));
    let w = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[w]!) w = i;
    const seq = this.seq++;
    this.load[w]!++;
    return new Promise<R>((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject, worker: w });
      this.workers[w]!.postMessage({ ...msg, seq }, transfer);
    });
  }

  /** Send `msg` to every worker, for no reply (a setting the workers keep; structured-cloned). */
  broadcast(msg: Record<string, unknown>): void {
    if (this.failure || this.closed) return;
    for (const w of this.workers) w.postMessage(msg);
  }

  /** Stop the workers; requests still waiting fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.waiting.values()) p.reject(new BulwarkError('ABORTED', `${this.what} pool closed`));
    this.waiting.clear();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private onReply(m: R): void {
    const p = this.waiting.get(m.seq);
    if (!p) return;
    this.waiting.delete(m.seq);
    this.load[p.worker]!--;
    if (m.error !== undefined) p.reject(new BulwarkError('INTERNAL', `${this.what} worker: ${m.error}`));
    else p.resolve(m);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.waiting.values()) p.reject(err);
    this.waiting.clear();
  }
}
