import * as fs from 'node:fs';
import { dmfsError } from '../errors';
import { parseSizeBytes } from './sizes';

/**
 * Pool options, with Docker's devicemapper names where they mean the same thing.
 * Parsed once at the boundary (CLI flags, `--opt dm.X=Y`, a daemon.json-style config);
 * unknown names and bad values are BAD_OPTION / BAD_CONFIG, never a silent default.
 */
export interface PoolOptions {
  /** dm.basesize: default virtual size limit of every layer. */
  baseSizeBytes: number;
  /** dm.min_free_space: percent of the data space that must stay free (0..99). */
  minFreeSpacePercent: number;
  /** dm.thinp_autoextend_threshold: grow the loop data file when used% reaches this (0 = off). */
  autoextendThresholdPercent: number;
  /** dm.thinp_autoextend_percent: grow by this percent of the current size. */
  autoextendPercent: number;
  /** dm.blkdiscard: give freed blocks back to the host (punch holes). */
  blkDiscard: boolean;
  /** dm.use_deferred_removal / dm.use_deferred_deletion: remove in-use layers at their last close. */
  deferredRemoval: boolean;
  deferredDeletion: boolean;
  /**
   * dmfs.metadata_backups: how many metadata backups to keep (like LVM's metadata
   * archive; see metadata-backup.ts). 0 = take none. Not a Docker option, hence `dmfs.`.
   */
  metadataBackups: number;
}

/** Options fixed at pool creation. */
export interface PoolCreateSettings {
  /** dm.loopdatasize / --size: size of the loop data file. */
  dataSizeBytes: number;
  /** dm.blocksize / --block-size: power of two, 64 KiB..1 MiB. */
  blockSizeBytes: number;
  /** dm.directlvm_device / --data-device: a raw block device instead of a loop file. */
  dataDevice: string | null;
  /** dm.directlvm_device_force / --force: use a device that holds a filesystem signature. */
  forceDevice: boolean;
}

export const DEFAULT_POOL_OPTIONS: PoolOptions = {
  baseSizeBytes: 10 * 1024 ** 3,
  minFreeSpacePercent: 10,
  autoextendThresholdPercent: 0,
  autoextendPercent: 20,
  blkDiscard: true,
  deferredRemoval: true,
  deferredDeletion: true,
  metadataBackups: 5,
};

export const DEFAULT_CREATE_SETTINGS: PoolCreateSettings = {
  dataSizeBytes: 100 * 1024 ** 3,
  blockSizeBytes: 64 * 1024,
  dataDevice: null,
  forceDevice: false,
};

export const MIN_BLOCK_SIZE_BYTES = 64 * 1024;
export const MAX_BLOCK_SIZE_BYTES = 1024 * 1024;

function parseBool(name: string, value: string): boolean {
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw dmfsError('BAD_OPTION', `${name}: '${value}' is not a boolean (true or false)`);
}

function parsePercent(name: string, value: string, max: number): number {
  const m = /^(\d+)%?$/.exec(value.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!m || n < 0 || n > max) throw dmfsError('BAD_OPTION', `${name}: '${value}' is not a percentage from 0 to ${max}`);
  return n;
}

export function validateBlockSize(bytes: number, what = 'block size'): number {
  if (bytes < MIN_BLOCK_SIZE_BYTES || bytes > MAX_BLOCK_SIZE_BYTES || (bytes & (bytes - 1)) !== 0) {
    throw dmfsError('BAD_OPTION', `${what}: ${bytes} bytes is not a power of two from 64K to 1M`);
  }
  return bytes;
}

/** Upper bound of dmfs.metadata_backups: each backup is a full compacted copy of the metadata. */
export const MAX_METADATA_BACKUPS = 100;

function parseCount(name: string, value: string, max: number): number {
  const m = /^\d+$/.exec(value.trim());
  const n = m ? Number(value.trim()) : NaN;
  if (!m || n > max) throw dmfsError('BAD_OPTION', `${name}: '${value}' is not a whole number from 0 to ${max}`);
  return n;
}

type Setter = (value: string, o: PoolOptions, c: PoolCreateSettings) => void;

const OPTION_SETTERS: Record<string, Setter> = {
  'dm.basesize': (v, o) => { o.baseSizeBytes = parseSizeBytes(v, 'dm.basesize'); },
  'dm.min_free_space': (v, o) => { o.minFreeSpacePercent = parsePercent('dm.min_free_space', v, 99); },
  'dm.thinp_autoextend_threshold': (v, o) => { o.autoextendThresholdPercent = parsePercent('dm.thinp_autoextend_threshold', v, 100); },
  'dm.thinp_autoextend_percent': (v, o) => { o.autoextendPercent = parsePercent('dm.thinp_autoextend_percent', v, 1000); },
  'dm.blkdiscard': (v, o) => { o.blkDiscard = parseBool('dm.blkdiscard', v); },
  'dm.use_deferred_removal': (v, o) => { o.deferredRemoval = parseBool('dm.use_deferred_removal', v); },
  'dm.use_deferred_deletion': (v, o) => { o.deferredDeletion = parseBool('dm.use_deferred_deletion', v); },
  'dmfs.metadata_backups': (v, o) => { o.metadataBackups = parseCount('dmfs.metadata_backups', v, MAX_METADATA_BACKUPS); },
  'dm.loopdatasize': (v, _o, c) => { c.dataSizeBytes = parseSizeBytes(v, 'dm.loopdatasize'); },
  'dm.blocksize': (v, _o, c) => { c.blockSizeBytes = validateBlockSize(parseSizeBytes(v, 'dm.blocksize'), 'dm.blocksize'); },
  'dm.directlvm_device': (v, _o, c) => { c.dataDevice = v; },
  'dm.directlvm_device_force': (v, _o, c) => { c.forceDevice = parseBool('dm.directlvm_device_force', v); },
};

export const KNOWN_OPTION_NAMES = Object.keys(OPTION_SETTERS);

/** Options that may change after creation (`dmfs pool set`); the rest are fixed at creation. */
export const RUNTIME_OPTION_NAMES = [
  'dm.basesize', 'dm.min_free_space', 'dm.thinp_autoextend_threshold', 'dm.thinp_autoextend_percent',
  'dm.blkdiscard', 'dm.use_deferred_removal', 'dm.use_deferred_deletion', 'dmfs.metadata_backups',
];

/** Applies `dm.X=Y` strings in order onto copies of the given defaults. */
export function applyOptionStrings(
  pairs: readonly string[],
  base: PoolOptions = DEFAULT_POOL_OPTIONS,
  create: PoolCreateSettings = DEFAULT_CREATE_SETTINGS,
): { options: PoolOptions; create: PoolCreateSettings } {
  const options = { ...base };
  const settings = { ...create };
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw dmfsError('BAD_OPTION', `option '${pair}' is not of the form dm.NAME=VALUE (or dmfs.NAME=VALUE)`);
    const name = pair.slice(0, eq).trim().toLowerCase();
    const value = pair.slice(eq + 1).trim();
    const setter = OPTION_SETTERS[name];
    if (!setter) {
      throw dmfsError('BAD_OPTION', `unknown option '${name}'; known options: ${KNOWN_OPTION_NAMES.join(', ')}`);
    }
    setter(value, options, settings);
  }
  return { options, create: settings };
}

/**
 * Reads a daemon.json-style config: either Docker's `{"storage-driver": "devicemapper",
 * "storage-opts": ["dm.basesize=20G", ...]}` or a flat `{"dm.basesize": "20G", ...}`.
 * Returns the option strings; bad JSON or unknown keys are BAD_CONFIG naming the problem.
 */
export function readConfigFile(file: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw dmfsError('BAD_CONFIG', `cannot read config file ${file}: ${(err as Error).message}`, err);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw dmfsError('BAD_CONFIG', `config file ${file} is not valid JSON: ${(err as Error).message}`, err);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw dmfsError('BAD_CONFIG', `config file ${file} must hold a JSON object`);
  }
  const pairs: string[] = [];
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (key === 'storage-driver') {
      if (value !== 'devicemapper' && value !== 'dmfs') {
        throw dmfsError('BAD_CONFIG', `config file ${file}: storage-driver '${String(value)}' is not devicemapper or dmfs`);
      }
    } else if (key === 'storage-opts') {
      if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
        throw dmfsError('BAD_CONFIG', `config file ${file}: storage-opts must be an array of "dm.NAME=VALUE" strings`);
      }
      pairs.push(...(value as string[]));
    } else if (key.startsWith('dm.') || key.startsWith('dmfs.')) {
      if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
        throw dmfsError('BAD_CONFIG', `config file ${file}: ${key} must be a string, number or boolean`);
      }
      pairs.push(`${key}=${String(value)}`);
    } else {
      throw dmfsError('BAD_CONFIG', `config file ${file}: unknown key '${key}' (expected storage-driver, storage-opts, dm.* or dmfs.* options)`);
    }
  }
  return pairs;
}
