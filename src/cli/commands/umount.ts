import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../../errors';
import { DaemonClient } from '../../service/control-client';
import {
  findMount,
  FUSE_FSTYPE,
  isRecordOwnerAlive,
  mountRunPaths,
  probeMountpoint,
  readMountRecord,
  removeFile,
  unmountFuse,
  waitForExit,
} from '../../fs/mount-table';
import { poolPaths } from '../../pool/pool-paths';
import type { Command } from '../command';
import type { UnmountResult } from '../../service/control-protocol';

/** UnmountResult: pid is the process that served the mount (when found under this pool root), recovered says a dead mount was detached, flushed that the data was synced and committed (null: not waited for). */
export type UmountResult = UnmountResult;

/** How long a daemon may take to sync and close after the unmount. */
const DAEMON_EXIT_TIMEOUT_MS = 120_000;

export async function umount(mountpointArg: string, root: string, opts: { lazy?: boolean } = {}): Promise<UmountResult> {
  const mountpoint = path.resolve(mountpointArg);
  const daemon = await DaemonClient.connect(root);
  if (daemon) {
    try {
      return await daemon.unmount({ mountpoint, lazy: Boolean(opts.lazy) });
    } catch (err) {
      // Not one of the daemon's mounts: a mount process of its own may serve it.
      if (!isDmfsError(err, 'NOT_MOUNTED')) throw err;
    } finally {
      await daemon.close();
    }
  }
  const paths = mountRunPaths(poolPaths(root).runDir, mountpoint);
  const rec = await readMountRecord(paths.record);
  // A daemon serves other mounts too: it is never signalled to end one (its control API does that).
  const daemonPid = rec && isRecordOwnerAlive(rec) && !rec.servedByDaemon ? rec.pid : null;

  if ((await probeMountpoint(mountpoint)) === 'dead') {
    // The daemon died and left the kernel mount behind: detach it, drop its record.
    await unmountFuse(mountpoint, { lazy: true });
    if (daemonPid !== null) process.kill(daemonPid, 'SIGKILL');
    await removeFile(paths.record);
    return { mountpoint, layer: rec?.layer ?? null, pid: daemonPid, recovered: true, flushed: null };
  }

  const entry = await findMount(mountpoint);
  if (!entry || entry.fstype !== FUSE_FSTYPE) {
    if (rec && daemonPid === null) await removeFile(paths.record);
    throw dmfsError('NOT_MOUNTED', `${mountpoint} is not a dmfs mount`);
  }

  await removeFile(paths.exit);
  // Fails with LAYER_IN_USE while files are open there, leaving the mount as it was.
  await unmountFuse(mountpoint, { lazy: opts.lazy });
  const layer = rec?.layer ?? (entry.source.startsWith('dmfs:') ? entry.source.slice(5) : null);
  if (daemonPid === null || opts.lazy) {
    // Another pool root's daemon, or a lazy unmount: the daemon finishes by itself when
    // its session ends (for --lazy: when the last open file there is closed).
    return { mountpoint, layer, pid: daemonPid, recovered: false, flushed: null };
  }
  // The daemon notices the end of its session by itself; the signal makes it notice at once.
  try {
    process.kill(daemonPid, 'SIGTERM');
  } catch {
    /* already exiting */
  }
  if (!(await waitForExit(daemonPid, DAEMON_EXIT_TIMEOUT_MS))) {
    throw dmfsError('MOUNT_FAILED', `unmounted, but the daemon (pid ${daemonPid}) did not finish within ${DAEMON_EXIT_TIMEOUT_MS / 1000} s; see ${paths.log}`);
  }
  let outcome: { ok?: boolean; error?: string | null } | null = null;
  try {
    outcome = JSON.parse(await fsp.readFile(paths.exit, 'utf8'));
  } catch {
    outcome = null;
  }
  await removeFile(paths.exit);
  await removeFile(paths.record);
  if (!outcome) throw dmfsError('IO_ERROR', `the daemon (pid ${daemonPid}) exited without reporting its final sync; see ${paths.log}`);
  if (!outcome.ok) throw dmfsError('IO_ERROR', `unmounted, but the final sync failed: ${outcome.error}; see ${paths.log}`);
  return { mountpoint, layer, pid: daemonPid, recovered: false, flushed: true };
}

export const command: Command = {
  name: 'umount',
  summary: 'Flush, commit and unmount a mounted layer',
  usage: 'MOUNTPOINT [--lazy]',
  description: [
    'Unmounts MOUNTPOINT and waits until its daemon has synced the data, committed the',
    'metadata and exited. Fails while files are open there, unless --lazy (detach now,',
    'finish when the last file is closed). A dead mount (its daemon crashed) is detached.',
  ].join('\n'),
  options: [{ name: 'lazy', type: 'boolean', short: 'l', description: 'detach now even if busy (like umount -l)' }],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const r = await umount(ctx.args[0], path.resolve(ctx.root), { lazy: Boolean(ctx.opts.lazy) });
    if (ctx.json) {
      ctx.stdout.write(JSON.stringify(r) + '\n');
      return 0;
    }
    if (r.recovered) ctx.stdout.write(`detached dead mount ${r.mountpoint}${r.layer ? ` (layer ${r.layer})` : ''}\n`);
    else ctx.stdout.write(`unmounted ${r.mountpoint}${r.layer ? ` (layer ${r.layer})` : ''}${r.flushed ? ', flushed and committed' : ''}\n`);
    return 0;
  },
};
