import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { dmfsError } from '../errors';

export interface DataDeviceCheck {
  /** Bytes the data file / device has now. */
  deviceBytes: number;
  /** Bytes the superblock says it has (nrBlocks * blockSizeBytes). */
  expectedBytes: number;
  /** Whole blocks the device holds now. */
  deviceBlocks: number;
  /** Highest block the space map marks used, or -1. */
  highestUsedBlock: number;
  /** Used blocks at or past deviceBlocks: their data is gone (a re-extension reads zeros). */
  usedBlocksBeyondEnd: number;
  short: boolean;
}


/** Size of a block device in bytes, from sysfs. */
export function blockDeviceBytes(device: string): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(device);
  } catch (err) {
    throw dmfsError('BAD_OPTION', `data device ${device}: ${(err as Error).message}`, err);
  }
  if (!st.isBlockDevice()) throw dmfsError('BAD_OPTION', `data device ${device} is not a block device`);
  const name = path.basename(fs.realpathSync(device));
  try {
    return Number(fs.readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim()) * 512;
  } catch (err) {
    throw dmfsError('BAD_OPTION', `cannot read the size of ${device} from /sys/class/block/${name}/size`, err);
  }
}

/** The filesystem (or other) signature on a device, via blkid/wipefs; null when blank. */
export function filesystemSignature(device: string): string | null {
  try {
    const out = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return out || 'unknown';
  } catch (err) {
    // blkid exits 2 when it finds nothing.
    if ((err as { status?: number }).status === 2) return null;
    try {
      const out = execFileSync('wipefs', ['-n', '-p', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const lines = out.trim().split('\n').filter((l) => l && !l.startsWith('#'));
      return lines.length ? lines[0].split(',')[3] || 'unknown' : null;
    } catch {
      return null;
    }
  }
}
