import { dumpMetadata } from '../../store/dump';
import type { Command } from '../command';
import { listOpt, stringOpt, withPool, writeNewFile, writeOutputFile } from '../output';

export const command: Command = {
  name: 'dump',
  summary: 'write the pool metadata as readable JSON (like thin_dump)',
  usage: '[--layer NAME...] [-o FILE]',
  description: 'Every layer record and every inode, entry, whiteout and block mapping of its segment.\nWith --layer, only those layers (for debugging; such a dump cannot be restored).',
  options: [
    { name: 'layer', type: 'string', multiple: true, valueName: 'NAME', description: 'dump only this layer' },
    { name: 'output', short: 'o', type: 'string', valueName: 'FILE', description: "write to FILE instead of stdout (written beside it and renamed; '-' for stdout)" },
  ],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const out = stringOpt(ctx, 'output');
    const dump = await withPool(ctx, async (pool) => {
      const d = await dumpMetadata(pool.thinPool, { layers: listOpt(ctx, 'layer') });
      // Written while the pool is open: the output guard needs its data device.
      if (out !== undefined && out !== '-') await writeOutputFile(pool, out, 'output', (file, flags) => writeNewFile(file, JSON.stringify(d, null, 1) + '\n', flags));
      return d;
    });
    if (out !== undefined && out !== '-') {
      if (!ctx.json) ctx.stderr.write(`wrote ${dump.layers.length} layers to ${out}\n`);
    } else ctx.stdout.write(JSON.stringify(dump, null, 1) + '\n');
    return 0;
  },
};
