#!/usr/bin/env node
// The bulwark console. Runs the TypeScript sources through tsx's loader, so no build step is
// needed to use the CLI from a checkout.
import { register } from 'tsx/esm/api';

// grpc-js sets the TLS server name to the IP it dials, which Node flags as deprecated: noise for users
process.noDeprecation = true;

register();
const { main } = await import('../cli/main.ts');
const code = await main(process.argv.slice(2));
// let open handles (gRPC channels) not keep a finished command alive
process.exit(code);
