import type { Command } from '../command';
import { printJson, withPool } from '../output';
import { requireFullMetadataVerify } from '../../pool/metadata-verify';

export const command: Command = {
  name: 'check',
  summary: 'verify pool metadata and space map (like thin_check); --repair fixes what it can',
  usage: '[--repair] [--data] [--json]',
  description: 'Exit 0 when the pool is consistent (or was repaired), 1 when problems remain.',
  options: [
    { name: 'repair', type: 'boolean', description: 'fix the space map, counters and unreachable records' },
    { name: 'data', type: 'boolean', description: 'also read every mapped data block and verify its checksum' },
  ],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    requireFullMetadataVerify(); // walk data.mdb before LMDB opens it, whatever its stamp
    // A pool whose data device is short opens here, to be reported and repaired.
    const report = await withPool(
      ctx,
      (pool) => pool.check({ repair: Boolean(ctx.opts.repair), data: Boolean(ctx.opts.data) }),
      { allowShortDataDevice: true },
    );
    if (ctx.json) printJson(ctx, report);
    else {
      const s = report.stats;
      ctx.stdout.write(`${s.layers} layers, ${s.inodes} inode records, ${s.entries} entries, ${s.mappedBlocks} mapped blocks, ${s.usedBlocks} used, ${s.reservedBlocks} reserved\n`);
      for (const p of report.problems) ctx.stdout.write(`${p.repaired ? 'repaired' : 'problem'}: ${p.kind}: ${p.message}\n`);
      ctx.stdout.write(report.ok ? 'pool is consistent\n' : `${report.problems.filter((p) => !p.repaired).length} problems; run 'dmfs check --repair'\n`);
    }
    return report.ok ? 0 : 1;
  },
};
