/**
 * One error type for the whole product, with a stable `code`.
 *
 * SDK, gRPC and file-system errors are translated into a BulwarkError at the edge that met them
 * (storage/s3-store.ts, the gRPC server); everything inside speaks codes. Whether a code is worth
 * retrying is stated here, once, so retry wrappers never guess from message text. Messages meant
 * for a person say what to do next.
 */

export type ErrorCode =
  /** A write or delete was refused because an Object Lock retention (or legal hold) still holds. */
  | 'OBJECT_LOCKED'
  /** The object, version or key does not exist (or only a delete marker is left). */
  | 'NOT_FOUND'
  /** The credential is not allowed to do this. */
  | 'ACCESS_DENIED'
  /** The bucket does not exist. */
  | 'NO_SUCH_BUCKET'
  /** The bucket has no Object Lock (or no versioning): nothing it stores can be made immutable. */
  | 'BUCKET_NOT_LOCKED'
  /** Bytes do not match the checksum or MAC they must have (tampering, corruption, truncation). */
  | 'CHECKSUM_MISMATCH'
  /** A retention change that S3 refuses: shortening, COMPLIANCE → GOVERNANCE, a date in the past. */
  | 'INVALID_RETENTION'
  /** The server asks us to slow down (503 SlowDown, 429). */
  | 'THROTTLED'
  /** A 5xx answer, a reset connection, a timeout: the request may succeed if tried again. */
  | 'TRANSIENT'
  /** The user gave something we cannot use (a bad duration, a bad path, a bad flag). */
  | 'INVALID_ARGUMENT'
  /** The repository format is unknown, damaged, or the passphrase/key is wrong. */
  | 'BAD_REPOSITORY'
  /** The wrong passphrase or key: decryption authenticated nothing. */
  | 'WRONG_KEY'
  /** The agent's change journal cannot be trusted (watcher error, overflow); a full scan is needed. */
  | 'JOURNAL_UNTRUSTED'
  /** The operation was cancelled through its AbortSignal. */
  | 'ABORTED'
  /** Something that should not happen; a bug. */
  | 'INTERNAL';

const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['THROTTLED', 'TRANSIENT']);

export class BulwarkError extends Error {
  override readonly name = 'BulwarkError';
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  /** True when the same request may succeed if sent again (after a backoff). */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

export function isRetryable(code: ErrorCode): boolean {
  return RETRYABLE.has(code);
}

/** True when `err` is a BulwarkError with one of the given codes. */
export function hasCode(err: unknown, ...codes: ErrorCode[]): err is BulwarkError {
  return err instanceof BulwarkError && codes.includes(err.code);
}

/** Wrap anything thrown into a BulwarkError, keeping a BulwarkError as it is. */
export function asBulwarkError(err: unknown, fallback: ErrorCode = 'INTERNAL'): BulwarkError {
  if (err instanceof BulwarkError) return err;
  if (err instanceof Error && err.name === 'AbortError') return new BulwarkError('ABORTED', 'operation cancelled', { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  return new BulwarkError(fallback, message, { cause: err });
}

/** Throw ABORTED when the signal has fired; call between the stages of a pipeline. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new BulwarkError('ABORTED', 'operation cancelled', { cause: signal.reason });
}
