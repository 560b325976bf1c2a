import * as fs from 'node:fs';
import { DmfsError } from '../errors';
import { EnvOpenLock } from './env-open-lock';
import { metaTxnids } from './lmdb-layout';
import { describeDamage, verifyMetadataStable, type MetadataDamage, type MetadataVerifyReport } from './metadata-verify';

// The gate every open of a pool's metadata passes (metadata-env.ts): data.mdb is proved
// sound by a walk (metadata-verify.ts) before liblmdb maps it, or the walk is skipped when
// the file is provably what the last walk saw (its stamp).

/**
 * 'full': walk the file at every open (check, mount: long-lived or there to find damage).
 * 'stamp': skip the walk when the file is unchanged since a walk proved it (same inode,
 * size, mtime, ctime and both meta txnids, see STAMP_FILE); any write, by dmfs or anything
 * else, changes at least one of them. A stamp is written after each walk that let the file
 * open, and at the exit of a 'stamp' process that proved the file (restampAtExit).
 */
export type MetadataVerifyMode = 'full' | 'stamp';

let processMode: MetadataVerifyMode = 'stamp';

/** Makes every later open in this process walk the file whatever its stamp (check, mount). */
export function requireFullMetadataVerify(): void {
  processMode = 'full';
}

/** Beside data.mdb: what the last walk that let the file open saw. */
export const STAMP_FILE = 'VERIFIED';

interface Stamp {
  v: 1;
  dev: number;
  ino: number;
  sizeBytes: number;
  mtimeNs: string;
  ctimeNs: string;
  txnids: number[];
}


function currentStamp(file: string): Stamp {
  const st = fs.statSync(file, { bigint: true });
  return {
    v: 1,
    dev: Number(st.dev),
    ino: Number(st.ino),
    sizeBytes: Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    txnids: metaTxnids(file),
  };
}

function sameStamp(a: Stamp, b: Stamp): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.sizeBytes === b.sizeBytes && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.txnids.join() === b.txnids.join();
}

function readStamp(dir: string): Stamp | null {
  try {
    const s = JSON.parse(fs.readFileSync(`${dir}/${STAMP_FILE}`, 'utf8')) as Stamp;
    return s?.v === 1 ? s : null;
  } catch {
    return null;
  }
}

function writeStamp(dir: string, stamp: Stamp): void {
  const tmp = `${dir}/${STAMP_FILE}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, JSON.stringify(stamp) + '\n', { mode: 0o600 });
    fs.renameSync(tmp, `${dir}/${STAMP_FILE}`);
  } catch {
    // Read-only pool directory: the next open walks again, nothing else is lost.
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* not created */
    }
  }
}

/** The walk that let this process open each metadata directory, when it found harmless damage. */
const reportsAtOpen = new Map<string, MetadataVerifyReport>();

/**
 * Damage the walk before the open found in `dir` and let pass (previous snapshot, leaked
 * pages): the open's own commits may have overwritten it since, but check reports it.
 */
export function damageSeenAtOpen(dir: string): MetadataDamage[] {
  return reportsAtOpen.get(dir)?.damage ?? [];
}

const restampArmed = new Set<string>();

/**
 * Every dmfs command commits (if only its pool-owner record), so a stamp taken at open is
 * stale at exit and the next command would walk again. A short command that proved the
 * file at open and exits 0 stamps what it leaves: since the proof, only liblmdb commits
 * (its own, or another dmfs process's) changed the file. Not done in 'full' processes
 * (mount, check): a mount lives for hours, long enough for damage from outside to land.
 * The price: damage from outside that lands while such a short command runs is not seen
 * until the next check or mount.
 */
function restampAtExit(dir: string): void {
  if (restampArmed.has(dir)) return;
  restampArmed.add(dir);
  process.once('exit', (code) => {
    if (code !== 0 || processMode !== 'stamp') return;
    try {
      writeStamp(dir, currentStamp(`${dir}/data.mdb`));
    } catch {
      // The pool was destroyed, or its directory is unreadable: nothing to stamp.
    }
  });
}

/** verifyMetadataStable's last resort for the environment in dir: a walk while no process commits (its open lock held exclusively). */
export function withoutCommits(dir: string): (walk: () => MetadataVerifyReport) => MetadataVerifyReport {
  return (walk) => {
    const lock = EnvOpenLock.acquire(dir, true);
    try {
      return lock.whileOpening(walk);
    } finally {
      lock.release();
    }
  };
}

/**
 * Proves the LMDB file of the metadata directory `dir` safe for liblmdb to open, or throws
 * METADATA_CORRUPT naming the damaged pages and what to do next; touches nothing in the
 * file either way. A missing file is not this function's business (the open reports it).
 */
export function proveMetadataSound(dir: string, mode: MetadataVerifyMode = processMode): MetadataVerifyReport | null {
  const file = `${dir}/data.mdb`;
  if (!fs.existsSync(file)) return null;
  const before = currentStamp(file);
  if (mode === 'stamp') {
    const stamp = readStamp(dir);
    if (stamp && sameStamp(stamp, before)) {
      restampAtExit(dir);
      return null;
    }
  }
  const report = verifyMetadataStable(file, withoutCommits(dir));
  if (!report.openable) {
    const root = dir.replace(/\/metadata\/?$/, '');
    const oneMetaLost = report.damage.every((d) => d.db === 'meta' || d.scope !== 'live') && report.metas.some((m) => m.sound);
    throw new DmfsError(
      'METADATA_CORRUPT',
      `the pool metadata ${file} is damaged, so it was not opened (nothing was changed): ${describeDamage(report)}. ` +
        (oneMetaLost ? `The other meta page (txn ${report.metas.find((m) => m.sound)!.txnid}) is sound, but LMDB could pick the damaged one. ` : '') +
        `Run 'dmfs check --root ${root}' for the full report, then 'dmfs check --repair --from-backup --root ${root}' to restore the last metadata backup.`,
      { cause: report },
    );
  }
  if (report.damage.length) reportsAtOpen.set(dir, report);
  else reportsAtOpen.delete(dir);
  const after = currentStamp(file);
  if (sameStamp(before, after)) writeStamp(dir, after);
  if (mode === 'stamp') restampAtExit(dir);
  return report;
}
