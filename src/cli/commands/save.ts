import { dmfsError } from '../../errors';
import { saveImage } from '../../image/oci-writer';
import type { Command } from '../command';
import { printJson, stringOpt, withPool } from '../output';
import { formatBytes } from '../progress';

export const command: Command = {
  name: 'save',
  summary: 'write an image as an OCI image layout (directory, or a .tar archive)',
  usage: 'IMAGE -o DIR|FILE.tar [--ref REF]',
  description: [
    'Writes the image layers of IMAGE (bottom up) as gzip OCI layers with a config, a manifest',
    'and index.json naming it org.opencontainers.image.ref.name=REF (default: the tag of the',
    'image name, else latest). skopeo (oci:DIR:REF, oci-archive:FILE.tar) and umoci',
    '(--image DIR:REF) read it. Saving into an existing layout adds or replaces that ref.',
  ].join('\n'),
  options: [
    { name: 'output', short: 'o', type: 'string', valueName: 'DIR|FILE', description: 'layout directory, or a file ending in .tar' },
    { name: 'ref', type: 'string', valueName: 'REF', description: 'ref name in index.json' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const output = stringOpt(ctx, 'output');
    if (output === undefined) throw dmfsError('USAGE', 'dmfs save needs -o DIR or -o FILE.tar');
    const result = await withPool(ctx, (pool) => saveImage(pool.store, ctx.args[0], output, { ref: stringOpt(ctx, 'ref') }));
    if (ctx.json) printJson(ctx, result);
    else {
      const total = result.layers.reduce((s, l) => s + l.sizeBytes, 0);
      ctx.stdout.write(
        `Saved ${ctx.args[0]} to ${result.output} as ${result.ref}: ${result.layers.length} layer(s), ` +
          `${formatBytes(total)} compressed, manifest ${result.manifestDigest}\n`,
      );
    }
    return 0;
  },
};
