import { once } from 'node:events';
import type { LayerChange } from '../../store/layer-store';
import type { Command } from '../command';
import { printJson, withPool } from '../output';

const LETTER: Record<LayerChange['change'], string> = { added: 'A', modified: 'C', deleted: 'D', opaque: 'O' };

export const command: Command = {
  name: 'diff',
  summary: 'list what a layer changed against its parent',
  usage: 'NAME',
  description: [
    "From the layer's own metadata (never a walk of two trees), one line per change as",
    '`docker diff` prints them: A added, C changed, D deleted; O marks a directory made',
    'opaque (every lower entry below it hidden).',
  ].join('\n'),
  options: [],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const changes = await withPool(ctx, async (pool) => {
      const fs = await pool.store.openLayer(ctx.args[0], { readOnly: true });
      try {
        const out: LayerChange[] = [];
        for await (const c of fs.changes()) out.push(c);
        return out;
      } finally {
        await fs.close();
      }
    });
    if (ctx.json) {
      printJson(ctx, changes.map((c) => ({
        path: c.path,
        change: c.change,
        ...(c.attr ? { kind: c.attr.kind, mode: c.attr.mode, uid: c.attr.uid, gid: c.attr.gid, sizeBytes: c.attr.sizeBytes, mtimeNs: c.attr.mtimeNs } : {}),
      })));
    } else {
      for (const c of changes) {
        // wt-image: wait while the reader is behind, or a pipe buffers the whole listing
        // (a tree 10,000 levels deep lists 100 MB).
        if (!ctx.stdout.write(`${LETTER[c.change]} ${c.path}\n`)) await once(ctx.stdout, 'drain');
      }
    }
    return 0;
  },
};
