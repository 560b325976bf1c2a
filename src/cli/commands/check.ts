import { Pool } from '../../api';
import { dmfsError, isDmfsError } from '../../errors';
import { requireFullMetadataVerify } from '../../pool/metadata-gate';
import { isPruningHeld, listBackups, setPruningHold, type BackupInfo } from '../../pool/metadata-backup';
import { poolPaths } from '../../pool/pool-paths';
import { formatBytes } from '../../pool/sizes';
import { ThinPool } from '../../pool/thin-pool';
import { checkPool, type CheckProblem, type CheckReport } from '../../store/check';
import { restoreFromBackup, type RestoreReport } from '../../store/metadata-restore';
import type { Command, CommandContext } from '../command';
import { formatTable, printJson } from '../output';

/** Problem kinds a plain --repair fixes without dropping anything that may still be data. */
const SAFE_REPAIR_KINDS = new Set(['LEAKED_BLOCK', 'FREE_BUT_MAPPED', 'USAGE_MISMATCH', 'DANGLING_ENTRY', 'DATA_DEVICE_SHORT']);
/** Kinds --force can clear (by dropping the data or records concerned). */
const FORCE_KINDS = new Set(['UNREFERENCED_DATA', 'UNKNOWN_SEGMENT', 'CORRUPT_RECORD', 'MAP_ENTRIES_LOST', 'MAP_COUNT_MISMATCH']);

export const command: Command = {
  name: 'check',
  summary: 'verify pool metadata and space map (like thin_check); --repair fixes what it can without losing data',
  usage: '[--repair [--force | --from-backup]] [--data] [--backups] [--json]',
  description: [
    'Exit 0 when the pool is consistent (or was repaired), 1 when problems remain.',
    '--repair fixes the space map, counters and records nothing can reach. It never frees a block that a metadata backup',
    'still maps or that a damaged record may own: it names the files concerned and keeps their data. --force drops it.',
    '--repair --from-backup rolls the metadata back to the newest backup that checks clean (the damaged metadata is kept',
    'aside under metadata/damaged-*), and says what is lost. The pool must not be mounted or in use.',
    '--backups lists the metadata backups (taken at layer create/commit/rm/import and unmount; dmfs.metadata_backups).',
  ].join('\n'),
  options: [
    { name: 'repair', type: 'boolean', description: 'fix the space map, counters and unreachable records (keeps data anything still references)' },
    { name: 'force', type: 'boolean', description: 'with --repair: also drop data only a backup or a damaged record still references' },
    { name: 'from-backup', type: 'boolean', description: 'with --repair: roll the metadata back to the newest backup that checks clean' },
    { name: 'data', type: 'boolean', description: 'also read every mapped data block and verify its checksum' },
    { name: 'backups', type: 'boolean', description: 'list the metadata backups' },
  ],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    requireFullMetadataVerify(); // walk data.mdb before LMDB opens it, whatever its stamp
    const repair = Boolean(ctx.opts.repair);
    const force = Boolean(ctx.opts.force);
    const fromBackup = Boolean(ctx.opts['from-backup']);
    if (ctx.opts.backups && (repair || force || fromBackup || ctx.opts.data)) throw dmfsError('USAGE', '--backups lists backups; it takes no other check option');
    if ((force || fromBackup) && !repair) throw dmfsError('USAGE', `--${force ? 'force' : 'from-backup'} goes with --repair: dmfs check --repair --${force ? 'force' : 'from-backup'}`);
    if (force && fromBackup) throw dmfsError('USAGE', '--force and --from-backup are two different repairs; pick one');
    if (ctx.opts.backups) return listCommand(ctx);
    if (fromBackup) return restoreCommand(ctx);
    return checkCommand(ctx, { repair, force });
  },
};

function listCommand(ctx: CommandContext): number {
  const paths = poolPaths(ctx.root);
  const backups = listBackups(paths.metadataDir);
  if (ctx.json) {
    printJson(ctx, backups.map((b) => ({ ...b, created: new Date(b.createdMs).toISOString() })));
    return 0;
  }
  if (isPruningHeld(paths.metadataDir)) {
    ctx.stderr.write('note: a check found problems, so old backups are kept (not pruned) until a check is clean\n');
  }
  if (!backups.length) {
    ctx.stdout.write(`no metadata backups in ${paths.metadataDir}/backups (dmfs.metadata_backups = 0, or nothing changed yet)\n`);
    return 0;
  }
  ctx.stdout.write(formatTable(
    ['NAME', 'CREATED (UTC)', 'REASON', 'LAYERS', 'SIZE'],
    backups.map((b) => [b.name, new Date(b.createdMs).toISOString(), b.reasons.join(',') || '-', b.layers === null ? '-' : String(b.layers), formatBytes(b.sizeBytes)]),
  ));
  return 0;
}

/**
 * The pool as check needs it: normally through Pool.open (which first finishes what dead
 * processes left); when damaged records stop the layer store from opening, the thin pool
 * alone — check reads the records itself and reports each damaged one.
 */
async function openForCheck(root: string): Promise<{ thin: ThinPool; close: () => Promise<void> }> {
  // A pool whose data device is short opens here, to be reported and repaired.
  const openOptions = { allowShortDataDevice: true };
  try {
    const pool = await Pool.open(root, openOptions);
    return { thin: pool.thinPool, close: () => pool.close() };
  } catch (err) {
    if (!isDmfsError(err, 'METADATA_CORRUPT')) throw err;
    const thin = await ThinPool.open(root, openOptions);
    return { thin, close: () => thin.close() };
  }
}

async function checkCommand(ctx: CommandContext, opts: { repair: boolean; force: boolean }): Promise<number> {
  const { thin, close } = await openForCheck(ctx.root);
  let report: CheckReport;
  try {
    // A pool being checked is no pool to archive: no backup at this close.
    thin.backupsSuspended = true;
    if (opts.repair && thin.hasOtherLiveOwners()) {
      throw dmfsError('POOL_LOCKED', 'other processes have the pool open (mounts or commands); a repair needs it alone. Unmount its layers (dmfs umount) and try again.');
    }
    report = await checkPool(thin, { repair: opts.repair, force: opts.force, data: Boolean(ctx.opts.data) });
    // Damaged metadata: stop pruning until a clean check, so good backups outlive copies of the damage.
    setPruningHold(thin.paths.metadataDir, report.ok ? 0 : (report.remaining ?? report.problems).filter((p) => !p.repaired).length);
  } finally {
    await close();
  }
  if (ctx.json) {
    printJson(ctx, report);
    return report.ok ? 0 : 1;
  }
  const out = ctx.stdout;
  const s = report.stats;
  out.write(`${s.layers} layers, ${s.inodes} inode records, ${s.entries} entries, ${s.mappedBlocks} mapped blocks (${s.sharedBlocks} shared), ${s.usedBlocks} used, ${s.reservedBlocks} reserved\n`);
  for (const p of report.problems) out.write(`${p.repaired ? 'repaired' : 'problem'}: ${p.kind}: ${p.message}\n`);
  const remaining = report.remaining ?? report.problems.filter((p) => !p.repaired);
  if (report.remaining) for (const p of report.remaining) out.write(`still: ${p.kind}: ${p.message}\n`);
  if (report.protectedFiles.length && !opts.force) {
    out.write('Files that would lose data if these blocks were freed:\n');
    for (const f of report.protectedFiles) {
      out.write(`  ${f.layer}:${f.path}${f.blocks.length ? ` (${f.blocks.length} block${f.blocks.length === 1 ? '' : 's'}${f.backup ? `, mapped by backup ${f.backup}` : ''})` : ' (damaged block map)'}\n`);
    }
  }
  if (report.ok) {
    out.write(opts.repair && report.problems.length ? 'repaired; a fresh check finds the pool consistent\n' : 'pool is consistent\n');
  } else {
    out.write(advice(remaining, report.backups, opts.repair) + '\n');
  }
  return report.ok ? 0 : 1;
}

/** The last line when problems remain: what each way out does. Never "run --repair" after a repair. */
function advice(remaining: CheckProblem[], nrBackups: number, repaired: boolean): string {
  const unrepaired = remaining.filter((p) => !p.repaired);
  const safe = unrepaired.filter((p) => SAFE_REPAIR_KINDS.has(p.kind)).length;
  const forceable = unrepaired.filter((p) => FORCE_KINDS.has(p.kind) && !/^layer record/.test(p.message)).length;
  const backupOnly = unrepaired.length - safe - forceable;
  const parts: string[] = [];
  if (repaired) parts.push(`${unrepaired.length} problem(s) remain that repair cannot fix without losing data.`);
  else parts.push(`${unrepaired.length} problem(s).`);
  if (!repaired && safe) parts.push(`'dmfs check --repair' fixes ${safe} of them without losing data.`);
  if (nrBackups) parts.push(`'dmfs check --repair --from-backup' rolls the metadata back to the newest of ${nrBackups} backup(s) that checks clean and lists what is lost.`);
  else if (forceable || backupOnly) parts.push('There is no metadata backup to roll back to.');
  if (forceable) parts.push(`'dmfs check --repair --force' drops the data of the files named above to clear ${forceable} of them.`);
  if (backupOnly) parts.push(`${backupOnly} of them (${[...new Set(unrepaired.filter((p) => !SAFE_REPAIR_KINDS.has(p.kind) && !FORCE_KINDS.has(p.kind) || /^layer record/.test(p.message)).map((p) => p.kind))].join(', ')}) no repair here can fix${nrBackups ? ' but a backup' : ''}.`);
  return parts.join(' ');
}

async function restoreCommand(ctx: CommandContext): Promise<number> {
  const r = await restoreFromBackup(ctx.root, { data: Boolean(ctx.opts.data) });
  if (ctx.json) {
    printJson(ctx, r);
    return r.check.ok ? 0 : 1;
  }
  ctx.stdout.write(formatRestore(r));
  return r.check.ok ? 0 : 1;
}

export function formatRestore(r: RestoreReport): string {
  const lines: string[] = [];
  for (const t of r.skipped) lines.push(`skipped backup ${t.name}: ${t.problems.slice(0, 3).join('; ')}${t.problems.length > 3 ? '; ...' : ''}`);
  const b: BackupInfo = r.backup;
  lines.push(`Restored the metadata from backup ${b.name} (taken ${new Date(b.createdMs).toISOString()}, after ${b.reasons.join(', ') || 'a change'}).`);
  lines.push(`The damaged metadata is kept in ${r.damagedDir}.`);
  const lost = r.lost;
  if (!lost.currentReadable) {
    lines.push(`The damaged metadata could not be read (${lost.currentError}): what changed after ${new Date(b.createdMs).toISOString()} is unknown and lost.`);
  } else if (!lost.layersCreated.length && !lost.layersRemoved.length && !lost.filesTotal && !lost.lostBlocks) {
    lines.push('Nothing is lost: the backup holds everything the damaged metadata still could tell.');
  } else {
    if (lost.layersCreated.length) lines.push(`Lost: ${lost.layersCreated.length} layer(s) created after the backup: ${lost.layersCreated.map((l) => l.name).join(', ')}.`);
    if (lost.layersRemoved.length) lines.push(`Back: ${lost.layersRemoved.length} layer(s) the damaged metadata no longer had (removed or damaged after the backup): ${lost.layersRemoved.map((l) => l.name).join(', ')}.`);
    if (lost.filesTotal) {
      lines.push(`Lost: changes to ${lost.filesTotal} file(s) made after the backup (they are as they were at the backup):`);
      for (const f of lost.files) lines.push(`  ${f.change.padEnd(8)} ${f.layer}:${f.path}`);
      if (lost.filesTotal > lost.files.length) lines.push(`  ... and ${lost.filesTotal - lost.files.length} more (--json lists up to ${lost.files.length})`);
    }
    if (lost.lostBlocks) lines.push(`${lost.lostBlocks} data block(s) written after the backup are free again (their data stays on disk until reused).`);
  }
  if (lost.overwritten.length) {
    lines.push(`Damaged: ${lost.overwritten.length} file(s) of the backup have blocks that were reused after it; reading them fails their checksum (EIO):`);
    for (const f of lost.overwritten.slice(0, 50)) lines.push(`  ${f.layer}:${f.path}`);
  }
  lines.push(r.check.ok ? 'A fresh check finds the pool consistent.' : `A fresh check still finds ${r.check.problems.length} problem(s): ${r.check.problems.slice(0, 5).map((p) => `${p.kind}: ${p.message}`).join('; ')}`);
  return lines.join('\n') + '\n';
}
