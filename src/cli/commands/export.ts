import { dmfsError } from '../../errors';
import { exportLayer, ExportStats } from '../../image/exporter';
import type { Command } from '../command';
import { newFileSink, printJson, streamSink, stringOpt, withPool, writeOutputFile } from '../output';
import { formatBytes } from '../progress';

export const command: Command = {
  name: 'export',
  summary: "write a layer's changes (or with --full its whole tree) as an OCI layer tar",
  usage: 'NAME -o FILE [--full]',
  description: [
    'Without --full: what NAME changed against its parent, from the layer\'s own metadata:',
    'added and modified entries, deletions as .wh.NAME whiteouts and opaque directories as',
    '.wh..wh..opq markers (OCI image layer format). With --full: the flattened filesystem.',
    'The tar is deterministic (sorted, pax records only where ustar cannot hold a field).',
    '-o - writes the tar to standard output. FILE is written under a temporary name beside it and',
    'renamed into place; a path inside the pool is refused (exit 2).',
  ].join('\n'),
  options: [
    { name: 'output', short: 'o', type: 'string', valueName: 'FILE', description: "tar file to write ('-' for stdout)" },
    { name: 'full', type: 'boolean', description: 'the flattened tree instead of the changes' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const output = stringOpt(ctx, 'output');
    if (output === undefined) throw dmfsError('USAGE', 'dmfs export needs -o FILE');
    if (output === '-' && ctx.json) throw dmfsError('USAGE', '-o - and --json both want stdout');
    const full = ctx.opts.full === true;
    let stats: ExportStats;
    if (output === '-') {
      const out = streamSink(ctx.stdout);
      stats = await withPool(ctx, (pool) => exportLayer(pool.store, ctx.args[0], out.write, { full }));
      await out.flushed();
    } else {
      // The pool is open before the output is touched: the guard needs its data device.
      stats = await withPool(ctx, (pool) =>
        writeOutputFile(pool, output, 'output', async (file, flags) => {
          const sink = newFileSink(file, flags);
          try {
            const r = await exportLayer(pool.store, ctx.args[0], sink.write, { full });
            await sink.end();
            return r;
          } catch (err) {
            sink.destroy();
            throw err;
          }
        }),
      );
    }
    if (ctx.json) printJson(ctx, { layer: ctx.args[0], output, full, ...stats });
    else if (output !== '-') {
      ctx.stdout.write(
        `Exported ${ctx.args[0]}${full ? ' (full tree)' : ''} to ${output}: ${stats.entries} entries ` +
          `(${stats.whiteouts} whiteouts, ${stats.opaques} opaque), ${formatBytes(stats.tarBytes)}\n`,
      );
    }
    return 0;
  },
};
