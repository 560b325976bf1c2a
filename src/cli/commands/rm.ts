import { isDmfsError } from '../../errors';
import type { Command } from '../command';
import { printJson, withPool } from '../output';

export const command: Command = {
  name: 'rm',
  summary: 'remove layers (deferred until unmount while mounted)',
  usage: 'NAME...',
  description: 'A layer with children is refused. A mounted layer is removed when its last mount goes away (deferred removal).',
  options: [],
  minArgs: 1,
  maxArgs: Infinity,
  async run(ctx) {
    const results: { name: string; removed: boolean; deferred: boolean; error?: { code: string; message: string } }[] = [];
    let firstError: unknown = null;
    await withPool(ctx, async (pool) => {
      for (const name of ctx.args) {
        try {
          const r = await pool.store.removeLayer(name);
          results.push({ name, removed: !r.deferred, deferred: r.deferred });
          if (!ctx.json) ctx.stdout.write(r.deferred ? `${name}: in use; removal deferred until it is unmounted\n` : `${name}: removed\n`);
        } catch (err) {
          if (!isDmfsError(err)) throw err;
          firstError ??= err;
          results.push({ name, removed: false, deferred: false, error: { code: err.code, message: err.message } });
          if (!ctx.json) ctx.stderr.write(`dmfs rm: ${name}: ${err.message}\n`);
        }
      }
    });
    if (ctx.json) printJson(ctx, results);
    return firstError ? (isDmfsError(firstError) ? firstError.exitCode : 1) : 0;
  },
};
