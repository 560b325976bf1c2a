import type { LayerFs } from '../../src/store/layer-store';

/** The whole content of inode `ino` of a layer, checking that one read returns all of it. */
export async function readAll(l: LayerFs, ino: number): Promise<Buffer> {
  const a = await l.getattr(ino);
  const buf = Buffer.alloc(a.sizeBytes);
  expect(await l.read(ino, buf, 0)).toBe(a.sizeBytes);
  return buf;
}
