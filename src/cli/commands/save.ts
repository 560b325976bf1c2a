import * as fs from 'node:fs';
import type { Pool } from '../../api';
import { dmfsError } from '../../errors';
import { saveImage, type SaveResult } from '../../image/oci-writer';
import { assertOutsidePool } from '../../pool/pool-guard';
import type { Command, CommandContext } from '../command';
import { printJson, stringOpt, withPool, writeOutputFile } from '../output';
import { formatBytes } from '../progress';

/**
 * What `-o` names: an OCI layout directory when it ends in '/', is an existing directory,
 * or is a new name not ending in '.tar'; an archive when it ends in '.tar' or is an
 * existing regular file (whatever its name: writing a directory over a file can only fail).
 */
export function saveOutputKind(output: string): 'dir' | 'tar' {
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(output.replace(/\/+$/, '') || '/');
  } catch {
    /* missing: decided by the name */
  }
  if (output.endsWith('/')) {
    if (st && !st.isDirectory()) throw dmfsError('NOT_DIR', `${output} is not a directory (drop the trailing '/' to write an archive)`);
    return 'dir';
  }
  if (st?.isDirectory()) return 'dir';
  if (st && !st.isFile()) throw dmfsError('INVALID', `${output} is neither a directory nor a regular file; name a layout directory or FILE.tar`);
  return st || output.endsWith('.tar') ? 'tar' : 'dir';
}

async function save(ctx: CommandContext, pool: Pool, output: string): Promise<SaveResult> {
  const ref = stringOpt(ctx, 'ref');
  if (saveOutputKind(output) === 'dir') {
    // A layout directory is filled in place (blobs and index.json each renamed into place).
    const r = assertOutsidePool(pool.root, output, 'output', { extraPaths: [pool.thinPool.dataPath], refuseAncestor: true });
    // Missing directories are created (mkdir -p), but not below a file.
    if (!r.exists && !fs.statSync(r.existingPath).isDirectory()) throw dmfsError('NOT_DIR', `${r.existingPath} (in output ${output}) is not a directory`);
    return saveImage(pool.store, ctx.args[0], output, { ref });
  }
  // saveImage writes an archive when the name ends in .tar: give it such a temporary name
  // (it writes that through its own temporary file, removed here if it fails).
  const result = await writeOutputFile(pool, output, 'output', async (tmp, flags) => {
    // saveOutputKind sent FIFOs and devices elsewhere: this is always the temporary file.
    if (flags !== 'wx') throw dmfsError('INVALID', `${output} is not a regular file; save writes an archive through a temporary file`);
    try {
      const r = await saveImage(pool.store, ctx.args[0], `${tmp}.tar`, { ref });
      fs.renameSync(`${tmp}.tar`, tmp);
      return r;
    } catch (err) {
      fs.rmSync(`${tmp}.tar`, { force: true });
      fs.rmSync(`${tmp}.tar.tmp-${process.pid}`, { force: true });
      throw err;
    }
  });
  return { ...result, output };
}

export const command: Command = {
  name: 'save',
  summary: 'write an image as an OCI image layout (directory, or a .tar archive)',
  usage: 'IMAGE -o DIR|FILE.tar [--ref REF]',
  description: [
    'Writes the image layers of IMAGE (bottom up) as gzip OCI layers with a config, a manifest',
    'and index.json naming it org.opencontainers.image.ref.name=REF (default: the tag of the',
    'image name, else latest). skopeo (oci:DIR:REF, oci-archive:FILE.tar) and umoci',
    '(--image DIR:REF) read it. Saving into an existing layout adds or replaces that ref.',
    '-o names an archive when it ends in .tar or is an existing file (replaced whole, through a',
    "temporary file beside it); else a layout directory (created if missing; 'DIR/' forces one).",
    'A path inside the pool, or a directory containing the pool, is refused (exit 2).',
  ].join('\n'),
  options: [
    { name: 'output', short: 'o', type: 'string', valueName: 'DIR|FILE', description: 'layout directory, or a file ending in .tar' },
    { name: 'ref', type: 'string', valueName: 'REF', description: 'ref name in index.json' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const output = stringOpt(ctx, 'output');
    if (output === undefined || output === '') throw dmfsError('USAGE', 'dmfs save needs -o DIR or -o FILE.tar');
    const result = await withPool(ctx, (pool) => save(ctx, pool, output));
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
