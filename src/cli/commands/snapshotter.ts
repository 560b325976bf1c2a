import * as path from 'node:path';
import { Pool } from '../../api';
import { requireFullMetadataVerify } from '../../pool/metadata-gate';
import { dmfsError } from '../../errors';
import { DaemonClient } from '../../service/control-client';
import { SNAPSHOTTER_SERVICE_NAME } from '../../snapshotter/hosted-snapshotter';
import { SnapshotterService, snapshotterPathsOf } from '../../snapshotter/snapshotter-service';
import { StoreMountHost } from '../../snapshotter/store-mount-host';
import type { Command } from '../command';

export const command: Command = {
  name: 'snapshotter',
  summary: "serve the pool to containerd as a proxy snapshotter (foreground)",
  usage: '[--socket PATH]',
  description: [
    "Serves containerd's snapshots API (containerd.services.snapshots.v1) on a unix socket,",
    'by default POOL/run/containerd-snapshotter.sock, until SIGINT or SIGTERM. Snapshots are',
    'dmfs layers (active: a container layer, committed: an image layer, view: a read-only',
    'mount) and this process serves every snapshot mount, under POOL/snapshots/. containerd',
    'loads it with [proxy_plugins.dmfs] type = "snapshot" address = "SOCKET" (see',
    'mount-helpers/containerd-config.toml). One containerd per pool: its garbage collector',
    'removes the snapshots it does not know of. DMFS_SNAPSHOTTER_TRACE=1 logs every request',
    'with its duration.',
    '',
    "The pool's daemon (dmfs daemon run|start) hosts the same service by default, on the same",
    'socket, and keeps its snapshot mounts across a restart of its worker: use this command where',
    'no daemon runs. While a daemon serves the pool this command refuses (POOL_LOCKED), naming',
    "the daemon's snapshotter socket.",
  ].join('\n'),
  options: [
    { name: 'socket', type: 'string', valueName: 'PATH', description: 'unix socket to listen on (default POOL/run/containerd-snapshotter.sock)' },
  ],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const root = path.resolve(ctx.root);
    const defaults = snapshotterPathsOf(root);
    const socketPath = path.resolve((ctx.opts.socket as string | undefined) ?? defaults.socketPath);
    const log = (line: string) => ctx.stderr.write(`${new Date().toISOString()} dmfs snapshotter: ${line}\n`);
    await refuseWhileDaemonServes(root);
    requireFullMetadataVerify(); // a service lives long; walk data.mdb before LMDB opens it
    const pool = await Pool.open(root);
    const host = new StoreMountHost(pool.store, log);
    let service: SnapshotterService | null = null;
    try {
      service = await SnapshotterService.start({ store: pool.store, mountHost: host, mountsDir: defaults.mountsDir, socketPath, log, traceRequests: process.env.DMFS_SNAPSHOTTER_TRACE === '1' });
      if (ctx.json) ctx.stdout.write(JSON.stringify({ socket: socketPath, pid: process.pid }) + '\n');
      else ctx.stdout.write(`dmfs snapshotter listening on ${socketPath} (pid ${process.pid})\n`);
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      log(`${signal}: stopping`);
    } finally {
      await service?.stop().catch((err) => log(`stopping failed: ${(err as Error).message}`));
      await host.unmountAll();
      await pool.close();
    }
    return 0;
  },
};

/**
 * Two processes serving one pool's snapshots would mount the same layers and answer two
 * containerds from one catalog: where the daemon serves the pool, containerd is to use the
 * daemon's snapshotter (or the daemon be stopped first).
 */
async function refuseWhileDaemonServes(root: string): Promise<void> {
  const client = await DaemonClient.connect(root);
  if (!client) return;
  let status;
  try {
    status = await client.status();
  } finally {
    await client.close();
  }
  const svc = status.services.find((s) => s.name === SNAPSHOTTER_SERVICE_NAME);
  const hosted = svc?.state === 'running'
    ? `and serves containerd's snapshots API on ${String(svc.detail.socket)}: point containerd there`
    : `with its snapshotter ${svc ? svc.state : 'off'}${svc?.error ? ` (${svc.error})` : ''}: restart it with its snapshotter (dmfs daemon stop, then dmfs daemon start)`;
  throw dmfsError('POOL_LOCKED', `the dmfs daemon (pid ${status.pid}) serves the pool ${root} ${hosted}, or stop the daemon to run dmfs snapshotter on its own`);
}
