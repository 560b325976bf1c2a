/**
 * Making a mountpoint ready for a dmfs mount, whoever serves it (a mount process of its
 * own, or the pool's daemon): refuse one in or above the pool, recover a dead mount left
 * there, drop a stale run record, create the directory.
 */
import { promises as fsp } from 'node:fs';
import { dmfsError } from '../errors';
import { assertOutsidePool } from '../pool/pool-guard';
import {
  findMount,
  FUSE_FSTYPE,
  isRecordOwnerAlive,
  mountRunPaths,
  probeMountpoint,
  readMountRecord,
  removeFile,
  unmountFuse,
} from './mount-table';

/**
 * A mountpoint may be neither in the pool (the server would then write its run record, and
 * every later command its data, through the mount into the layer) nor above it (the mount
 * would hide the pool's files from every other process). PATH_IN_POOL, exit 2. Every path
 * that mounts (CLI, mount.dmfs, the daemon, Node API callers) runs this before touching
 * the mountpoint.
 */
export function assertMountpointOutsidePool(root: string, mountpoint: string): void {
  assertOutsidePool(root, mountpoint, 'mountpoint', { refuseAncestor: true });
}

/** Makes the mountpoint usable: recovers a dead mount, drops stale records, creates the directory. */
export async function prepareMountpoint(mountpoint: string, runDir: string): Promise<{ recovered: boolean }> {
  const paths = mountRunPaths(runDir, mountpoint);
  let recovered = false;
  let state = await probeMountpoint(mountpoint);
  if (state === 'dead') {
    await unmountFuse(mountpoint, { lazy: true });
    await removeFile(paths.record);
    recovered = true;
    state = await probeMountpoint(mountpoint);
  }
  if (state === 'dead') throw dmfsError('MOUNT_FAILED', `${mountpoint} is a dead mount that could not be detached`);
  if (state === 'not-dir') throw dmfsError('NOT_DIR', `${mountpoint} is not a directory`);
  if (state === 'missing') await fsp.mkdir(mountpoint, { recursive: true });

  const rec = await readMountRecord(paths.record);
  const entry = await findMount(mountpoint);
  if (entry?.fstype === FUSE_FSTYPE) {
    const owner = rec && isRecordOwnerAlive(rec) ? ` (layer ${rec.layer}, pid ${rec.pid})` : '';
    throw dmfsError('LAYER_IN_USE', `${mountpoint} is already a dmfs mount${owner}; run dmfs umount ${mountpoint} first`);
  }
  if (rec) await removeFile(paths.record);
  return { recovered };
}
