/**
 * A FuseHostView (src/fs/fuse-diagnosis.ts) built in a fresh temp directory: /dev/null
 * stands in for a /dev/fuse anyone may open, uid 1000 mounts, fusermounts are looked for in
 * DIR/bin only, and DIR/fuse.conf does not exist until a test writes it.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { FuseHostView } from '../../src/fs/fuse-diagnosis';

export interface TempFuseHost {
  dir: string;
  view: FuseHostView;
  /** Writes an executable stand-in DIR/bin/NAME with `mode` (0o4755: setuid, root-owned when run as root); returns its path. */
  stub(name: string, mode: number): string;
  cleanup(): void;
}

export function tempFuseHost(): TempFuseHost {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmfs-fusehost-'));
  const bin = path.join(dir, 'bin');
  return {
    dir,
    view: { devFusePath: '/dev/null', uid: 1000, fusermountDirs: [bin], fuseConfPath: path.join(dir, 'fuse.conf') },
    stub(name, mode) {
      mkdirSync(bin, { recursive: true });
      const file = path.join(bin, name);
      writeFileSync(file, '#!/bin/sh\n');
      chmodSync(file, mode);
      return file;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * A fresh tempFuseHost for each test of the enclosing describe (beforeEach/afterEach); the
 * returned object always shows the current one.
 */
export function eachTempFuseHost(): TempFuseHost {
  let current: TempFuseHost | null = null;
  beforeEach(() => {
    current = tempFuseHost();
  });
  afterEach(() => current?.cleanup());
  const now = (): TempFuseHost => {
    if (!current) throw new Error('eachTempFuseHost: used outside a test');
    return current;
  };
  return {
    get dir() {
      return now().dir;
    },
    get view() {
      return now().view;
    },
    stub: (name, mode) => now().stub(name, mode),
    cleanup: () => now().cleanup(),
  };
}
