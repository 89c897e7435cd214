import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS, LOW_MEMORY_GLIBC_TUNABLES } from '../../agent/process-tuning.js';

const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/bulwark');

describe('bin/bulwark starts the agent with its memory settings', () => {
  it('passes the same GLIBC_TUNABLES and Node flags as agent/process-tuning.ts', () => {
    const script = readFileSync(bin, 'utf8');
    expect(script).toContain(LOW_MEMORY_GLIBC_TUNABLES);
    for (const flag of AGENT_NODE_FLAGS) expect(script).toContain(`exec node ${flag}`);
  });

  it('applies them to `bulwark agent …` only; BULWARK_LOW_MEMORY=1 adds the malloc setting to a GLIBC_TUNABLES the user set', () => {
    // a stand-in `node` on PATH prints what it was started with
    const fake = path.join(fileURLToPath(new URL('.', import.meta.url)), '../fixtures/fake-node');
    const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
      execFileSync(bin, args, { env: { PATH: `${fake}:/usr/bin:/bin`, ...env }, encoding: 'utf8' }).replace(/\n$/, '').split('\n');
    const [agentArgs, agentTunables] = run(['agent', 'start'], { GLIBC_TUNABLES: 'glibc.pthread.rseq=0' });
    expect(agentArgs).toMatch(new RegExp(`^${AGENT_NODE_FLAGS.join(' ')} \\S+/bin/bulwark\\.js agent start$`));
    expect(agentTunables).toBe('glibc.pthread.rseq=0');
    const [lowArgs, lowTunables] = run(['agent', 'start'], { GLIBC_TUNABLES: 'glibc.pthread.rseq=0', BULWARK_LOW_MEMORY: '1' });
    expect(lowArgs).toBe(agentArgs);
    expect(lowTunables).toBe(`glibc.pthread.rseq=0:${LOW_MEMORY_GLIBC_TUNABLES}`);
    const [lsArgs, lsTunables] = run(['ls']);
    expect(lsArgs).toMatch(/^\S+\/bin\/bulwark\.js ls$/);
    expect(lsTunables).toBe('');
  });
});
