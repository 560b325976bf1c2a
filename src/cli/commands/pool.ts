import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../api';
import { dmfsError, isDmfsError } from '../../errors';
import { poolPaths } from '../../pool/pool-paths';
import { DaemonClient } from '../../service/control-client';
import { liveMountRecords } from '../../store/metadata-restore';
import { parseSizeBytes, formatBytes } from '../../pool/sizes';
import type { Command, CommandContext } from '../command';
import { listOpt, printJson, stringOpt, withPool } from '../output';

/**
 * What `pool create` may be pointed at: a missing path, or a directory that is not a pool
 * yet and holds none of the names a pool uses. A file (or device) is refused rather than
 * half-created and then removed; foreign data/, metadata/ or run/ directories are refused
 * because a create that fails part-way removes what it made there. An existing pool is left
 * to Pool.create (POOL_EXISTS). BAD_OPTION (exit 2); nothing is touched.
 */
export function checkNewPoolRoot(root: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') {
      throw dmfsError('BAD_OPTION', `--root ${root}: a component of the path is a file, not a directory; name a new or empty directory for the pool`);
    }
    throw dmfsError('BAD_OPTION', `--root ${root}: ${(err as Error).message}`, err);
  }
  if (!st.isDirectory()) {
    throw dmfsError('BAD_OPTION', `--root ${root} is a file, not a directory; name a new or empty directory for the pool (the file was left as it is)`);
  }
  const paths = poolPaths(root);
  if (fs.existsSync(path.join(paths.metadataDir, 'data.mdb'))) return;
  const taken = [paths.metadataDir, path.dirname(paths.dataFile), paths.runDir].filter((p) => fs.existsSync(p));
  if (taken.length) {
    throw dmfsError(
      'BAD_OPTION',
      `${root} is not a dmfs pool but already holds ${taken.map((p) => path.basename(p) + '/').join(', ')}; ` +
        'choose another --root (or, if they are left from an interrupted pool create, remove them first)',
    );
  }
}

async function create(ctx: CommandContext): Promise<number> {
  checkNewPoolRoot(ctx.root);
  const size = stringOpt(ctx, 'size');
  const blockSize = stringOpt(ctx, 'block-size');
  const pool = await Pool.create({
    root: ctx.root,
    ...(size !== undefined ? { sizeBytes: parseSizeBytes(size, '--size') } : {}),
    ...(blockSize !== undefined ? { blockSizeBytes: parseSizeBytes(blockSize, '--block-size') } : {}),
    ...(stringOpt(ctx, 'data-device') ? { dataDevice: stringOpt(ctx, 'data-device') } : {}),
    force: Boolean(ctx.opts.force),
    options: listOpt(ctx, 'opt'),
    ...(stringOpt(ctx, 'config') ? { configFile: stringOpt(ctx, 'config') } : {}),
  });
  try {
    const info = await pool.info();
    if (ctx.json) printJson(ctx, { root: pool.root, ...info });
    else {
      ctx.stdout.write(
        `Created pool ${info.poolName} at ${pool.root}: ${formatBytes(info.dataSpaceTotalBytes)} of ${formatBytes(info.poolBlocksizeBytes)} blocks (${info.dataMode} mode, ${info.dataFile}).\n` +
          `Next: dmfs create NAME --root ${pool.root}   or   dmfs import IMAGE --root ${pool.root}\n`,
      );
    }
  } finally {
    await pool.close();
  }
  return 0;
}

async function resize(ctx: CommandContext): Promise<number> {
  const sizeText = ctx.args[1];
  const r = await withPool(ctx, (pool) => pool.resize(sizeText === undefined ? null : parseSizeBytes(sizeText, 'SIZE')));
  if (ctx.json) printJson(ctx, r);
  else ctx.stdout.write(`Pool data space: ${formatBytes(r.oldBytes)} -> ${formatBytes(r.newBytes)}\n`);
  return 0;
}

async function set(ctx: CommandContext): Promise<number> {
  const pairs = ctx.args.slice(1);
  if (!pairs.length) throw dmfsError('USAGE', 'usage: dmfs pool set dm.NAME=VALUE...');
  const options = await withPool(ctx, async (pool) => pool.setOptions(pairs));
  if (ctx.json) printJson(ctx, options);
  else ctx.stdout.write(`Updated: ${pairs.join(', ')}\n`);
  return 0;
}

/**
 * The entries a pool has in its root directory; `pool destroy` removes these and nothing
 * else. Whoever adds an entry to the pool root adds its name here.
 */
export const POOL_ROOT_ENTRIES: readonly string[] = (() => {
  const p = poolPaths('/');
  return [p.metadataDir, path.dirname(p.dataFile), p.runDir, p.lockFile].map((e) => path.basename(e));
})();

/**
 * Removes the pool's own entries from `root`, then `root` itself when nothing else is left.
 * A pool created in a directory that held other files (a home directory, /var/lib) must
 * not take them along. Returns the names left behind.
 */
function removePoolEntries(root: string): string[] {
  for (const name of POOL_ROOT_ENTRIES) fs.rmSync(path.join(root, name), { recursive: true, force: true });
  let left: string[];
  try {
    left = fs.readdirSync(root);
  } catch {
    return [];
  }
  if (left.length === 0) fs.rmdirSync(root);
  return left.sort();
}

/** Open failures of a pool that exists but cannot be read: destroy still removes it. */
function poolDamage(err: unknown): boolean {
  if (isDmfsError(err)) return ['POOL_FORMAT', 'METADATA_CORRUPT', 'DATA_DEVICE_SHORT', 'IO_ERROR', 'DATA_CORRUPT'].includes(err.code);
  return typeof (err as NodeJS.ErrnoException)?.code === 'string';
}

async function destroy(ctx: CommandContext): Promise<number> {
  if (!ctx.opts.force) throw dmfsError('USAGE', `this deletes every layer in ${ctx.root}; run 'dmfs pool destroy --force' to confirm`);
  // The pool's daemon has it open (and would recreate run/ under it): stop it first.
  const daemon = await DaemonClient.connect(ctx.root);
  if (daemon) {
    await daemon.close();
    throw dmfsError('POOL_LOCKED', `the pool's daemon serves ${ctx.root}; stop it first (dmfs daemon stop --root ${ctx.root})`);
  }
  let damaged: Error | null = null;
  try {
    await withPool(ctx, async (pool) => {
      const mounted = (await pool.store.listLayers()).filter((l) => l.mounts.length);
      if (mounted.length) throw dmfsError('LAYER_IN_USE', `layers are mounted (${mounted.map((l) => l.mounts[0].mountpoint).join(', ')}); unmount them first`);
    });
  } catch (err) {
    // A pool this build cannot read, or whose metadata or data device is damaged, can still
    // be destroyed (that is how to start again), once no daemon serves a mount from it.
    if (!poolDamage(err) || !fs.existsSync(poolPaths(ctx.root).metadataDir)) throw err;
    const live = liveMountRecords(poolPaths(ctx.root).runDir);
    if (live.length) throw dmfsError('LAYER_IN_USE', `the pool cannot be opened (${(err as Error).message}), and layers of it are still mounted (${live.join(', ')}); run 'dmfs umount' on them first`, err);
    damaged = err as Error;
  }
  const kept = removePoolEntries(ctx.root);
  if (ctx.json) printJson(ctx, { destroyed: ctx.root, kept, ...(damaged ? { damaged: damaged.message } : {}) });
  else {
    if (damaged) ctx.stderr.write(`dmfs pool: the pool could not be opened (${damaged.message}); destroyed it as asked\n`);
    ctx.stdout.write(`Destroyed pool at ${ctx.root}\n`);
    if (kept.length) ctx.stdout.write(`Kept ${ctx.root} and what it holds that is not the pool's: ${kept.join(', ')}\n`);
  }
  return 0;
}

export const command: Command = {
  name: 'pool',
  summary: 'create, resize, configure or destroy the thin pool',
  usage: 'create [--size 100G] [--block-size 64K] [--data-device DEV [--force]] [--opt dm.X=Y...] [--config FILE]\n       dmfs pool resize [SIZE]\n       dmfs pool set dm.X=Y...\n       dmfs pool destroy --force',
  description: [
    'create: a new pool under --root. Loop mode (default): a sparse data file of --size.',
    'Direct mode: --data-device names a raw block device; one holding a filesystem is refused unless --force.',
    'Options keep Docker devicemapper names: dm.basesize (10G), dm.min_free_space (10%),',
    'dm.thinp_autoextend_threshold / dm.thinp_autoextend_percent, dm.blkdiscard (true), dm.blocksize, dm.loopdatasize,',
    'dm.use_deferred_removal, dm.use_deferred_deletion, dm.directlvm_device, dm.directlvm_device_force.',
    '--config reads a daemon.json-style file: {"storage-opts": ["dm.basesize=20G"]}.',
    'resize: grows the data space online (loop mode: to SIZE; direct mode: to the device size).',
    'set: changes runtime options of an existing pool.',
  ].join('\n'),
  options: [
    { name: 'size', type: 'string', valueName: 'SIZE', description: 'loop data file size (default 100G)' },
    { name: 'block-size', type: 'string', valueName: 'SIZE', description: 'block size, power of two 64K..1M (default 64K)' },
    { name: 'data-device', type: 'string', valueName: 'DEV', description: 'direct mode: raw block device' },
    { name: 'force', type: 'boolean', description: 'use a device holding a filesystem / confirm destroy' },
    { name: 'opt', type: 'string', multiple: true, valueName: 'dm.X=Y', description: 'pool option' },
    { name: 'config', type: 'string', valueName: 'FILE', description: 'daemon.json-style config file' },
  ],
  minArgs: 1,
  maxArgs: Infinity,
  async run(ctx) {
    const sub = ctx.args[0];
    switch (sub) {
      case 'create':
        if (ctx.args.length !== 1) throw dmfsError('USAGE', 'usage: dmfs pool create [OPTIONS]');
        return create(ctx);
      case 'resize':
        if (ctx.args.length > 2) throw dmfsError('USAGE', 'usage: dmfs pool resize [SIZE]');
        return resize(ctx);
      case 'set':
        return set(ctx);
      case 'destroy':
        return destroy(ctx);
      default:
        throw dmfsError('USAGE', `unknown pool sub-command '${sub}' (create, resize, set, destroy)`);
    }
  },
};
