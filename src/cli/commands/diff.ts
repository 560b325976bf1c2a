import { dmfsError } from '../../errors';
import type { LayerChange } from '../../store/layer-store';
import type { Command } from '../command';
import { printJson, withPool, writeOut } from '../output';

const LETTER: Record<LayerChange['change'], string> = { added: 'A', modified: 'C', deleted: 'D', opaque: 'O' };

const C_ESCAPES: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\t': '\\t', '\r': '\\r', '\x07': '\\a', '\b': '\\b', '\f': '\\f', '\v': '\\v' };

/**
 * A path for one line of output, escaped as `ls -b` escapes names: backslash, the C escapes
 * (\n \t \r \a \b \f \v) and every other control character (C0, DEL, C1) as \ooo octal of
 * its UTF-8 bytes, so one change is always one line. Spaces stay as they are (unlike ls -b):
 * the path is the rest of the line after the letter and one space, so they are unambiguous.
 * Printable non-ASCII stays as it is (ls -b in a UTF-8 locale).
 */
export function escapePath(p: string): string {
  return p.replace(/[\\\x00-\x1f\x7f-\x9f]/g, (ch) => C_ESCAPES[ch] ?? [...Buffer.from(ch, 'utf8')].map((b) => `\\${b.toString(8).padStart(3, '0')}`).join(''));
}

export const command: Command = {
  name: 'diff',
  summary: 'list what a layer changed against its parent',
  usage: 'NAME',
  description: [
    "From the layer's own metadata (never a walk of two trees), one line per change as",
    '`docker diff` prints them: A added, C changed, D deleted; O marks a directory made',
    'opaque (every lower entry below it hidden).',
    'Names are escaped as ls -b does (\\n, \\t, \\\\, \\ooo), so each change is one line; with -z each',
    'record is the letter, a space and the raw path, ended by a NUL byte (for xargs -0 and the like).',
  ].join('\n'),
  options: [
    { name: 'null', short: 'z', type: 'boolean', description: 'NUL-terminated records with raw (unescaped) paths' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const nul = ctx.opts.null === true;
    if (nul && ctx.json) throw dmfsError('USAGE', '-z and --json are two output formats; choose one');
    type ChangeRecord = { path: string; change: LayerChange['change']; kind?: string; mode?: number; uid?: number; gid?: number; sizeBytes?: number; mtimeNs?: bigint };
    const records: ChangeRecord[] = [];
    // Text is written as the changes come (memory bounded by one chunk, whatever the
    // number and depth of paths; a reader that goes away, | head, stops the walk early).
    let chunk = '';
    await withPool(ctx, async (pool) => {
      const fs = await pool.store.openLayer(ctx.args[0], { readOnly: true });
      try {
        for await (const c of fs.changes()) {
          if (ctx.json) {
            records.push({
              path: c.path,
              change: c.change,
              ...(c.attr ? { kind: c.attr.kind, mode: c.attr.mode, uid: c.attr.uid, gid: c.attr.gid, sizeBytes: c.attr.sizeBytes, mtimeNs: c.attr.mtimeNs } : {}),
            });
            continue;
          }
          chunk += nul ? `${LETTER[c.change]} ${c.path}\0` : `${LETTER[c.change]} ${escapePath(c.path)}\n`;
          if (chunk.length >= 64 * 1024) {
            await writeOut(ctx.stdout, chunk);
            chunk = '';
          }
        }
      } finally {
        await fs.close();
      }
    });
    if (ctx.json) printJson(ctx, records);
    else if (chunk) await writeOut(ctx.stdout, chunk);
    return 0;
  },
};
