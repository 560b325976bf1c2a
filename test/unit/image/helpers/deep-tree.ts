/**
 * A layer tar of one directory chain `d/d/d/...` `depth` levels deep with a file at the
 * bottom, written straight to a file (10,000 levels make ~110 MB: every entry carries
 * its whole path in a pax record). Paths past PATH_MAX (4096 bytes) are the point: they
 * exist only inside the tar and the pool, never as host paths.
 */
import * as fs from 'node:fs';
import { TarWriter } from '../../../../src/image/tar-writer';

export const DEEP_NAME = 'd';
export const DEEP_FILE = 'bottom';
export const DEEP_CONTENT = Buffer.from('at the bottom\n');
export const T0_NS = 1_650_000_000_000_000_000n;

/** 'd/d/.../d' with `depth` components. */
export function deepDirPath(depth: number): string {
  return new Array(depth).fill(DEEP_NAME).join('/');
}

export async function writeDeepTar(file: string, depth: number): Promise<void> {
  const fd = fs.openSync(file, 'w');
  try {
    const w = new TarWriter((chunk) => {
      fs.writeSync(fd, chunk);
    });
    let path = '';
    for (let i = 0; i < depth; i++) {
      path = i === 0 ? DEEP_NAME : `${path}/${DEEP_NAME}`;
      await w.add({ type: 'dir', path, mode: 0o755, uid: 0, gid: 0, mtimeNs: T0_NS });
    }
    await w.add({ type: 'file', path: `${path}/${DEEP_FILE}`, mode: 0o644, uid: 0, gid: 0, mtimeNs: T0_NS, sizeBytes: DEEP_CONTENT.length }, DEEP_CONTENT);
    await w.finish();
  } finally {
    fs.closeSync(fd);
  }
}
