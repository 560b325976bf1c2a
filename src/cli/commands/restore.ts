import * as fs from 'node:fs';
import { dmfsError } from '../../errors';
import { restoreMetadata, type MetadataDump } from '../../store/dump';
import type { Command } from '../command';
import { printJson, withPool } from '../output';

export const command: Command = {
  name: 'restore',
  summary: "replace the pool's metadata with a dump (like thin_restore)",
  usage: 'FILE',
  description: 'Rewrites every layer record from FILE (made by dmfs dump) and rebuilds the space map.\nThe data device stays as it is. Refused while the pool is mounted or in use.',
  options: [],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    let dump: MetadataDump;
    try {
      dump = JSON.parse(fs.readFileSync(ctx.args[0], 'utf8'));
    } catch (err) {
      throw dmfsError('BAD_IMAGE', `cannot read dump ${ctx.args[0]}: ${(err as Error).message}`, err);
    }
    const r = await withPool(ctx, (pool) => restoreMetadata(pool.thinPool, dump));
    if (ctx.json) printJson(ctx, r);
    else ctx.stdout.write(`restored ${r.layers} layers, ${r.blocks} data blocks in use. Run 'dmfs check' to verify.\n`);
    return 0;
  },
};
