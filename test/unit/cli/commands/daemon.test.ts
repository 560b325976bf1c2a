/**
 * `dmfs daemon`'s snapshotter flags at the boundary (no daemon is started: each case is
 * refused before anything runs), and `dmfs snapshotter` refusing while a daemon (here one
 * in this process) serves the pool.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { Pool } from '../../../../src/api';
import type { CommandContext } from '../../../../src/cli/command';
import { command as daemon } from '../../../../src/cli/commands/daemon';
import { command as snapshotter } from '../../../../src/cli/commands/snapshotter';
import { PoolDaemon } from '../../../../src/service/pool-daemon';
import { HostedSnapshotter } from '../../../../src/snapshotter/hosted-snapshotter';

function ctxFor(root: string, args: string[], opts: CommandContext['opts']): CommandContext {
  return { args, opts, root, json: false, stdout: new PassThrough(), stderr: new PassThrough() };
}

describe('dmfs daemon and dmfs snapshotter: who serves the snapshots API', () => {
  let root: string;

  beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-daemon-cli-'));
    await (await Pool.create({ root, sizeBytes: 1 << 30 })).close();
  });

  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  it('--no-snapshotter and --snapshotter-socket exclude each other; neither goes with status or stop', async () => {
    await expect(daemon.run(ctxFor(root, ['run'], { 'no-snapshotter': true, 'snapshotter-socket': '/tmp/x.sock' }))).rejects.toMatchObject({ code: 'USAGE' });
    await expect(daemon.run(ctxFor(root, ['start'], { 'snapshotter-socket': '' }))).rejects.toMatchObject({ code: 'USAGE' });
    await expect(daemon.run(ctxFor(root, ['status'], { 'no-snapshotter': true }))).rejects.toMatchObject({ code: 'USAGE' });
    await expect(daemon.run(ctxFor(root, ['stop'], { 'snapshotter-socket': '/tmp/x.sock' }))).rejects.toMatchObject({ code: 'USAGE' });
  });

  it('dmfs snapshotter refuses with POOL_LOCKED while a daemon serves the pool, naming the daemon\'s socket', async () => {
    const socket = path.join(root, 'run', 'snap-test.sock');
    const d = await PoolDaemon.start(root, { log: () => undefined, services: [new HostedSnapshotter({ socketPath: socket })], startServices: ['containerd-snapshotter'] });
    try {
      expect(d.status().services).toEqual([expect.objectContaining({ name: 'containerd-snapshotter', state: 'running', detail: { socket, snapshotMounts: 0 } })]);
      expect(fs.statSync(socket).mode & 0o777).toBe(0o600);
      const refused = snapshotter.run(ctxFor(root, [], {}));
      await expect(refused).rejects.toMatchObject({ code: 'POOL_LOCKED' });
      await expect(refused).rejects.toThrow(socket);
    } finally {
      await d.stop();
    }
    expect(fs.existsSync(socket)).toBe(false); // the service removed its socket as it stopped
  });
});
