import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS, LOW_MEMORY_GLIBC_TUNABLES, agentProcess } from '../../agent/process-tuning.js';

const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/bulwark');

describe('bin/bulwark\'s start-up settings for agents, and the low-memory mode', () => {
  it('passes the same GLIBC_TUNABLES and Node flags as agent/process-tuning.ts', () => {
    const script = readFileSync(bin, 'utf8');
    expect(script).toContain(LOW_MEMORY_GLIBC_TUNABLES);
    expect(script).toContain(`exec node ${AGENT_NODE_FLAGS.join(' ')} "$here/bulwark.js"`);
  });

  it('gives `bulwark agent …` its Node flags, and the malloc settings with BULWARK_LOW_MEMORY=1 only, keeping a GLIBC_TUNABLES the user set', () => {
    // a stand-in `node` on PATH prints what it was started with
    const fake = path.join(fileURLToPath(new URL('.', import.meta.url)), '../fixtures/fake-node');
    const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
      execFileSync(bin, args, { env: { PATH: `${fake}:/usr/bin:/bin`, ...env }, encoding: 'utf8' }).replace(/\n$/, '').split('\n');
    const user = { GLIBC_TUNABLES: 'glibc.pthread.rseq=0' };
    const [lowArgs, lowTunables] = run(['agent', 'start'], { ...user, BULWARK_LOW_MEMORY: '1' });
    const agentArgs = new RegExp(`^${AGENT_NODE_FLAGS.join(' ')} \\S+/bin/bulwark\\.js agent start$`);
    expect(lowArgs).toMatch(agentArgs);
    expect(lowTunables).toBe(`glibc.pthread.rseq=0:${LOW_MEMORY_GLIBC_TUNABLES}`);
    // the same as bin/bulwark, for programs that start agents themselves (the benchmarks)
    expect(agentProcess(user, true)).toEqual({ flags: AGENT_NODE_FLAGS, env: { ...user, BULWARK_LOW_MEMORY: '1', GLIBC_TUNABLES: lowTunables } });
    const [args, tunables] = run(['agent', 'start'], user);
    expect(args).toMatch(agentArgs);
    expect(tunables).toBe('glibc.pthread.rseq=0');
    expect(agentProcess(user, false)).toEqual({ flags: AGENT_NODE_FLAGS, env: user });
    const [lsArgs, lsTunables] = run(['ls'], { BULWARK_LOW_MEMORY: '1' });
    expect(lsArgs).toMatch(/^\S+\/bin\/bulwark\.js ls$/);
    expect(lsTunables).toBe('');
  });
});
