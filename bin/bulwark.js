#!/usr/bin/env node
// The bulwark console. Runs the TypeScript sources through tsx's loader, so no build step is
// needed to use the CLI from a checkout.
import { register } from 'tsx/esm/api';

// grpc-js sets the TLS server name to the IP it dials, which Node flags as deprecated: noise for users
process.noDeprecation = true;
// the AWS SDK warns at every start that releases after January 2027 need Node 22: for developers, not users
const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  if (String(warning).includes('AWS SDK for JavaScript') || JSON.stringify(rest).includes('NodeVersionSupportWarning')) return;
  return emitWarning.call(process, warning, ...rest);
};

register();
const { main } = await import('../cli/main.ts');
const code = await main(process.argv.slice(2));
// let open handles (gRPC channels) not keep a finished command alive
process.exit(code);
