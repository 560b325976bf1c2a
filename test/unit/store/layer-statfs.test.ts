import { LAYER_INODE_LIMIT, layerStatfs, type LayerSpaceFigures } from '../../../src/store/layer-statfs';

const BS = 65536;
const MiB = 1024 ** 2;
const base: LayerSpaceFigures = {
  blockSizeBytes: BS, sizeLimitBytes: 10 * 1024 ** 3, chainUsedBytes: 0, poolAvailableBlocks: 3686,
  chainInodes: 1, readOnly: false, nameMaxBytes: 255,
};

describe('layerStatfs', () => {
  test('a 10 GiB limit on a small pool: Size is what the pool can still give plus what the chain holds', () => {
    const s = layerStatfs({ ...base, chainUsedBytes: 64 * MiB, poolAvailableBlocks: 2662 });
    expect(s).toMatchObject({ totalBlocks: 1024 + 2662, freeBlocks: 2662, availBlocks: 2662 });
    expect(s.totalBlocks - s.availBlocks).toBe(1024); // df: Used = Size - Avail
  });

  test('the layer limit caps Size when the pool has more', () => {
    const s = layerStatfs({ ...base, sizeLimitBytes: 32 * MiB, chainUsedBytes: 8 * MiB, poolAvailableBlocks: 1e6 });
    expect(s).toMatchObject({ totalBlocks: 512, freeBlocks: 384, availBlocks: 384 });
  });

  test('partial blocks of inline data count as a used block; a chain over its limit shows no room, not negative room', () => {
    expect(layerStatfs({ ...base, chainUsedBytes: 100 }).totalBlocks - layerStatfs({ ...base, chainUsedBytes: 100 }).freeBlocks).toBe(1);
    const over = layerStatfs({ ...base, sizeLimitBytes: 4 * BS, chainUsedBytes: 6 * BS });
    expect(over).toMatchObject({ totalBlocks: 6, freeBlocks: 0, availBlocks: 0 });
  });

  test('a full pool and a read-only layer: nothing to write, Size = Used', () => {
    expect(layerStatfs({ ...base, chainUsedBytes: 10 * BS, poolAvailableBlocks: 0 })).toMatchObject({ totalBlocks: 10, freeBlocks: 0, availBlocks: 0 });
    const ro = layerStatfs({ ...base, chainUsedBytes: 10 * BS, readOnly: true, chainInodes: 7 });
    expect(ro).toMatchObject({ totalBlocks: 10, freeBlocks: 0, availBlocks: 0, totalInodes: 7, freeInodes: 0 });
  });

  test('inodes: used = total - free is the chain\'s count', () => {
    const s = layerStatfs({ ...base, chainInodes: 1234 });
    expect(s.totalInodes - s.freeInodes).toBe(1234);
    expect(s.totalInodes).toBe(LAYER_INODE_LIMIT);
  });
});
