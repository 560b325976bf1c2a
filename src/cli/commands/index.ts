import type { Command } from '../command';

/**
 * The command registry: name → lazy loader, so `dmfs --help` and each command load only
 * what they need. Order here is the order of `dmfs --help`.
 */
export const COMMAND_LOADERS: ReadonlyArray<readonly [string, () => Command]> = [
  ['pool', () => require('./pool').command],
  ['info', () => require('./info').command],
  ['create', () => require('./create').command],
  ['ls', () => require('./ls').command],
  ['inspect', () => require('./inspect').command],
  ['commit', () => require('./commit').command],
  ['rm', () => require('./rm').command],
  ['mount', () => require('./mount').command],
  ['umount', () => require('./umount').command],
  ['import', () => require('./import').command],
  ['export', () => require('./export').command],
  ['save', () => require('./save').command],
  ['pull', () => require('./pull').command],
  ['push', () => require('./push').command],
  ['diff', () => require('./diff').command],
  ['check', () => require('./check').command],
  ['dump', () => require('./dump').command],
  ['restore', () => require('./restore').command],
  ['daemon', () => require('./daemon').command],
  ['snapshotter', () => require('./snapshotter').command],
  ['doctor', () => require('./doctor').command],
];

export function loadCommand(name: string): Command | null {
  const entry = COMMAND_LOADERS.find(([n]) => n === name);
  if (!entry) return null;
  try {
    return entry[1]();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') return null;
    throw err;
  }
}
