/**
 * Commands that the pool's daemon answers when it runs (ls, create, mount, umount) ask it
 * over its socket instead of opening the pool: no LMDB open, no metadata walk, and the
 * daemon's mounts see the change at once. When no daemon runs they work on the pool
 * directly, as before. Standard output is guarded against pool files either way.
 */
import type { Pool } from '../api';
import { assertFdOutsidePool } from '../pool/pool-guard';
import { DaemonClient } from '../service/control-client';
import type { CommandContext } from './command';
import { withPool } from './output';

/** The daemon's client for ctx.root, or null when none runs. The caller closes it. */
export async function daemonFor(ctx: CommandContext): Promise<DaemonClient | null> {
  return DaemonClient.connect(ctx.root);
}

/** Runs `viaDaemon` against the pool's daemon when one runs, else `direct` on the pool opened here. */
export async function withDaemonOrPool<T>(
  ctx: CommandContext,
  viaDaemon: (client: DaemonClient) => Promise<T>,
  direct: (pool: Pool) => Promise<T>,
): Promise<T> {
  if (ctx.stdout === process.stdout) assertFdOutsidePool(ctx.root, 1, 'standard output');
  const client = await daemonFor(ctx);
  if (!client) return withPool(ctx, direct);
  try {
    return await viaDaemon(client);
  } finally {
    await client.close();
  }
}
