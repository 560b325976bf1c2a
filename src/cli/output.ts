import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Pool } from '../api';
import { dmfsError } from '../errors';
import { assertFdOutsidePool, assertOutsidePool } from '../pool/pool-guard';
import type { ThinPoolOpenOptions } from '../pool/thin-pool';
import type { CommandContext } from './command';

/**
 * Opens the pool at ctx.root for the duration of fn, closing it whatever happens. Refuses
 * (PATH_IN_POOL) when the process's standard output is a file of this pool: before the
 * open for the pool's own files (an open commits to data.mdb), after it for a data device
 * outside the root (direct mode, named by the superblock).
 */
export async function withPool<T>(
  ctx: CommandContext,
  fn: (pool: Pool) => Promise<T>,
  openOptions: ThinPoolOpenOptions = {},
): Promise<T> {
  const guardStdout = ctx.stdout === process.stdout;
  if (guardStdout) assertFdOutsidePool(ctx.root, 1, 'standard output');
  // Loaded here, not at the top: commands the pool's daemon answers never load LMDB.
  const { Pool } = await import('../api');
  const pool = await Pool.open(ctx.root, openOptions);
  try {
    if (guardStdout) assertFdOutsidePool(pool.root, 1, 'standard output', { extraPaths: [pool.thinPool.dataPath] });
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

export function printJson(ctx: CommandContext, value: unknown): void {
  ctx.stdout.write(JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
}

/** Plain left-aligned columns, header first. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('   ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

export function stringOpt(ctx: CommandContext, name: string): string | undefined {
  const v = ctx.opts[name];
  return typeof v === 'string' ? v : undefined;
}

export function listOpt(ctx: CommandContext, name: string): string[] {
  const v = ctx.opts[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}

/**
 * Where a command writes a file the user named (`export -o`, `dump -o`, `save -o FILE`):
 * refused (PATH_IN_POOL, exit 2) when it resolves into the pool, else written to a
 * temporary name beside the target, fsynced, and renamed into place, so a failure leaves
 * the target as it was and a reader never sees half a file. Symlinks are followed (the
 * file they point at is replaced, as a shell redirection would write it). A FIFO or a
 * character device (`-o /dev/null`, a named pipe) is written directly: renaming over it
 * would replace the device node. `write` fills the file it is given, opened with `flags`
 * ('wx': the new temporary file; 'w': the FIFO/device); its result is returned.
 */
export async function writeOutputFile<T>(
  pool: Pool, target: string, what: string, write: (file: string, flags: 'wx' | 'w') => Promise<T>,
): Promise<T> {
  const { real, direct } = checkedOutputPath(pool, target, what);
  if (direct) return write(real, 'w');
  const tmp = path.join(path.dirname(real), `.${path.basename(real)}.tmp-${process.pid}`);
  try {
    const result = await write(tmp, 'wx');
    const fd = fs.openSync(tmp, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, real);
    return result;
  } catch (err) {
    fs.rmSync(tmp, { force: true, recursive: true });
    throw err;
  }
}

/**
 * The guard and the shape checks of writeOutputFile: the real path to replace, and whether
 * it is a FIFO or character device to write directly. Directories, block devices and
 * sockets are refused.
 */
export function checkedOutputPath(pool: Pool, target: string, what: string): { real: string; direct: boolean } {
  if (target === '') throw dmfsError('USAGE', `${what} path is empty`);
  const resolved = assertOutsidePool(pool.root, target, what, { extraPaths: [pool.thinPool.dataPath] });
  const real = resolved.realPath;
  if (resolved.exists) {
    const st = fs.statSync(real);
    if (st.isDirectory()) throw dmfsError('IS_DIR', `${what} ${target} is a directory; name a file to write`);
    if (st.isFIFO() || st.isCharacterDevice()) return { real, direct: true };
    if (!st.isFile()) throw dmfsError('INVALID', `${what} ${target} is not a regular file, a FIFO or a character device; name a file to write (or '-' for stdout where the command takes it)`);
    return { real, direct: false };
  }
  const dir = path.dirname(real);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw dmfsError('NOT_FOUND', `the directory of ${what} ${target} does not exist (${dir}); create it first: mkdir -p ${dir}`);
  }
  if (!st.isDirectory()) throw dmfsError('NOT_DIR', `${dir} (in ${what} ${target}) is not a directory`);
  return { real, direct: false };
}

/** Writes a whole buffer or string to the file writeOutputFile hands out. */
export async function writeNewFile(file: string, data: string | Buffer, flags: 'wx' | 'w' = 'wx'): Promise<void> {
  await fs.promises.writeFile(file, data, { flag: flags });
}

/**
 * A write stream on a new file with backpressure: `write(chunk)` resolves once the stream
 * can take more; `end()` resolves once everything reached the file. A write error (ENOSPC,
 * EIO) rejects the pending or next call instead of becoming an unhandled 'error' event.
 */
export function newFileSink(file: string, flags: 'wx' | 'w' = 'wx'): { write: (chunk: Buffer) => Promise<void>; end: () => Promise<void>; destroy: () => void } {
  const out = fs.createWriteStream(file, { flags });
  let failure: Error | null = null;
  out.on('error', (err) => {
    failure ??= err;
  });
  const settle = (event: 'drain' | 'finish') =>
    new Promise<void>((resolve, reject) => {
      if (failure) return reject(failure);
      const onEvent = () => {
        out.off('error', onError);
        resolve();
      };
      const onError = (err: Error) => {
        out.off(event, onEvent);
        reject(err);
      };
      out.once(event, onEvent);
      out.once('error', onError);
    });
  return {
    write: async (chunk) => {
      if (failure) throw failure;
      if (!out.write(chunk)) await settle('drain');
    },
    end: async () => {
      const done = settle('finish');
      out.end();
      await done;
    },
    destroy: () => out.destroy(),
  };
}

/**
 * Writes to a command's stdout and waits for the stream to take it (backpressure), so a
 * long listing stops at the first write after its reader went away (EPIPE, handled in main).
 */
export function writeOut(out: NodeJS.WritableStream, text: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    out.write(text, (err?: Error | null) => (err ? reject(err) : resolve()));
  });
}

/**
 * Backpressure on a stream the command did not open (its stdout): `write` resolves when the
 * stream takes more and rejects once any write failed (EPIPE when the reader went away:
 * main turns that into a quiet exit), so a long export stops instead of waiting for a
 * 'drain' that a destroyed stream never emits. `flushed` waits for the last write.
 */
export function streamSink(out: NodeJS.WritableStream): { write: (chunk: Buffer) => Promise<void>; flushed: () => Promise<void> } {
  let failure: Error | null = null;
  let last: Promise<void> = Promise.resolve();
  const onDone = (err?: Error | null) => {
    if (err) failure ??= err;
  };
  return {
    write: async (chunk) => {
      if (failure) throw failure;
      let resolveLast!: () => void;
      last = new Promise<void>((r) => (resolveLast = r));
      const more = out.write(chunk, (err?: Error | null) => {
        onDone(err);
        resolveLast();
      });
      if (more) return;
      await new Promise<void>((resolve, reject) => {
        const cleanup = () => {
          out.off('drain', onDrain);
          out.off('error', onError);
          out.off('close', onClose);
        };
        const onDrain = () => (cleanup(), resolve());
        const onError = (err: Error) => (cleanup(), reject(err));
        const onClose = () => (cleanup(), failure ? reject(failure) : resolve());
        out.once('drain', onDrain);
        out.once('error', onError);
        out.once('close', onClose);
        last.then(() => {
          if (failure) onError(failure);
        });
      });
      if (failure) throw failure;
    },
    flushed: async () => {
      await last;
      if (failure) throw failure;
    },
  };
}
