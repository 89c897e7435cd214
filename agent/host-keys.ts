/** Host keys as received from the controller (the agent never holds the master key). */
import { BulwarkError } from '../common/errors.js';
import type { HostKeys } from '../common/repo/keys.js';

export function deriveHostKeysFromParts(hostId: string, enc: Uint8Array, id: Uint8Array, chunk: Uint8Array): HostKeys {
  if (enc.length !== 32 || id.length !== 32 || chunk.length !== 32) throw new BulwarkError('INVALID_ARGUMENT', `incomplete keys for host ${hostId}`);
  return { hostId, enc: Buffer.from(enc), id: Buffer.from(id), chunk: Buffer.from(chunk) };
}
