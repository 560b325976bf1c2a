import { parseSourceSpec } from '../../image/image-source';
import { importImage, ImportResult } from '../../image/importer';
import { assertOutsidePool } from '../../pool/pool-guard';
import type { Command } from '../command';
import { printJson, stringOpt, withPool } from '../output';
import { formatBytes, ProgressBar } from '../progress';

export const command: Command = {
  name: 'import',
  summary: 'import an image (docker save, OCI layout or archive, layer tar, directory) as image layers',
  usage: 'SOURCE[:TAG|@DIGEST] [--name NAME]',
  description: [
    'SOURCE is a `docker save` / `podman save` tarball, an OCI image layout directory or tar',
    '(skopeo oci: / oci-archive:, umoci), a single layer tar (plain, gzip or zstd), or a plain',
    'directory (one layer). :TAG or @DIGEST picks one image of a layout or archive.',
    '',
    'Each layer becomes an image layer on the one below; layers already in the pool (same',
    'OCI ChainID) are reused. The top layer carries the image name (--name, else the name the',
    'source gives, else the file name); the others are named layer-<chain id prefix> and carry',
    'their diff id in the label dmfs.diff_id. Digests are verified; a failed import leaves the',
    'pool as it was.',
  ].join('\n'),
  options: [
    { name: 'name', type: 'string', valueName: 'NAME', description: 'name of the imported image (its top layer)' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    // A source in the pool is never an image, and a directory holding the pool would be read
    // while the import writes to it (the data file grows as it is read): PATH_IN_POOL, exit 2.
    const { file } = parseSourceSpec(ctx.args[0]);
    assertOutsidePool(ctx.root, file, 'import source', { refuseAncestor: true });
    const bar = new ProgressBar(ctx.stderr as NodeJS.WriteStream, { enabled: ctx.json ? false : undefined, label: 'Importing' });
    let result: ImportResult;
    try {
      result = await withPool(ctx, (pool) =>
        importImage(pool.store, ctx.args[0], {
          name: stringOpt(ctx, 'name'),
          onProgress: (p) => bar.update(p, p.entriesDone === 0),
          // Accepted-with-a-defect notes (tar without end blocks), one line each on stderr.
          onWarning: (m) => {
            bar.done();
            ctx.stderr.write(`warning: ${m}\n`);
          },
        }),
      );
    } finally {
      bar.done();
    }
    if (ctx.json) {
      printJson(ctx, result);
      return 0;
    }
    const imported = result.layers.filter((l) => !l.reused);
    const entries = imported.reduce((s, l) => s + l.entries, 0);
    const bytes = imported.reduce((s, l) => s + l.contentBytes, 0);
    ctx.stdout.write(
      `Imported ${result.name} from ${result.format}: ${result.layers.length} layer(s), ` +
        `${imported.length} new, ${result.layers.length - imported.length} reused; ` +
        `${entries} entries, ${formatBytes(bytes)} in ${(result.durationMs / 1000).toFixed(1)}s\n`,
    );
    for (const l of result.layers) {
      ctx.stdout.write(`  ${l.reused ? 'reused  ' : 'imported'} ${l.name}  ${l.diffId ?? ''}\n`);
    }
    return 0;
  },
};
