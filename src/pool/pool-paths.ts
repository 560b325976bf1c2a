import * as os from 'node:os';
import * as path from 'node:path';

/** Default pool root: /var/lib/dmfs as root, else $XDG_DATA_HOME/dmfs (~/.local/share/dmfs). */
export function defaultPoolRoot(): string {
  if (typeof process.getuid === 'function' && process.getuid() === 0) return '/var/lib/dmfs';
  const xdg = process.env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share');
  return path.join(xdg, 'dmfs');
}

/** Every path under a pool root comes from here. */
export interface PoolPaths {
  root: string;
  /** LMDB environment directory (data.mdb, lock.mdb). */
  metadataDir: string;
  /** Loop mode: the sparse data file. Direct mode: unused (the device path is in the superblock). */
  dataFile: string;
  /** Mount daemons' pid files and logs. */
  runDir: string;
  /** Serialises whole-pool operations of separate processes (create, resize, check --repair). */
  lockFile: string;
}

export function poolPaths(root: string): PoolPaths {
  const abs = path.resolve(root);
  return {
    root: abs,
    metadataDir: path.join(abs, 'metadata'),
    dataFile: path.join(abs, 'data', 'data-file'),
    runDir: path.join(abs, 'run'),
    lockFile: path.join(abs, 'pool.lock'),
  };
}
