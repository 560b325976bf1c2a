import * as fs from 'node:fs';
import { dumpMetadata } from '../../store/dump';
import type { Command } from '../command';
import { listOpt, stringOpt, withPool } from '../output';

export const command: Command = {
  name: 'dump',
  summary: 'write the pool metadata as readable JSON (like thin_dump)',
  usage: '[--layer NAME...] [-o FILE]',
  description: 'Every layer record and every inode, entry, whiteout and block mapping of its segment.\nWith --layer, only those layers (for debugging; such a dump cannot be restored).',
  options: [
    { name: 'layer', type: 'string', multiple: true, valueName: 'NAME', description: 'dump only this layer' },
    { name: 'output', short: 'o', type: 'string', valueName: 'FILE', description: 'write to FILE instead of stdout' },
  ],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const dump = await withPool(ctx, async (pool) => dumpMetadata(pool.thinPool, { layers: listOpt(ctx, 'layer') }));
    const text = JSON.stringify(dump, null, 1) + '\n';
    const out = stringOpt(ctx, 'output');
    if (out) {
      fs.writeFileSync(out, text);
      if (!ctx.json) ctx.stderr.write(`wrote ${dump.layers.length} layers to ${out}\n`);
    } else ctx.stdout.write(text);
    return 0;
  },
};
