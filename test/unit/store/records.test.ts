import { blockIo } from '../../../src/native';
import {
  HOLE_REF, SECTORS_PER_BLOCK, blockContentMatches, firstBadSector, holdsData, isHoleRef, packBlockRef, packInode, sectorCrcsOf,
  sectorSizeBytes, unpackBlockRef, unpackInode, type InodeRecord,
} from '../../../src/store/records';

const crcs = Array.from({ length: SECTORS_PER_BLOCK }, (_, i) => (0x9e3779b9 * (i + 1)) >>> 0);

test('a per-sector data ref packs as [2][block: 6 bytes LE][16 x crc: 4 bytes LE] and unpacks to itself', () => {
  const ref = { block: 0x0102_0304_0506, sectorCrcs: crcs };
  const raw = packBlockRef(ref);
  expect(raw.length).toBe(1 + 6 + 4 * 16);
  expect(raw[0]).toBe(2);
  expect(raw.readUIntLE(1, 6)).toBe(0x0102_0304_0506);
  for (let i = 0; i < 16; i++) expect(raw.readUInt32LE(7 + 4 * i)).toBe(crcs[i]);
  expect(unpackBlockRef(raw)).toEqual(ref);
});

test('a whole-block (tag 0) ref written before sectors still unpacks, and packs back to the same bytes', () => {
  const raw = Buffer.from([0, 0x2a, 0, 0, 0, 0, 0, 0x83, 0x92, 0x06, 0xe3]);
  expect(unpackBlockRef(raw)).toEqual({ block: 42, crc: 0xe3069283 });
  expect(packBlockRef({ block: 42, crc: 0xe3069283 })).toEqual(raw);
});

test('inline refs keep tag 1', () => {
  const raw = packBlockRef(Buffer.from('tiny'));
  expect(raw[0]).toBe(1);
  expect(unpackBlockRef(raw)).toEqual(Buffer.from('tiny'));
});

test('a per-sector ref with the wrong number of CRCs does not pack; a short tag-2 entry does not unpack', () => {
  expect(() => packBlockRef({ block: 1, sectorCrcs: crcs.slice(1) })).toThrow(expect.objectContaining({ code: 'INVALID' }));
  const raw = packBlockRef({ block: 1, sectorCrcs: crcs });
  expect(() => unpackBlockRef(raw.subarray(0, raw.length - 1))).toThrow(expect.objectContaining({ code: 'METADATA_CORRUPT' }));
});

test('sector CRCs: 16 sectors of blockSize/16 bytes; a damaged sector is found by index', () => {
  for (const bs of [64 * 1024, 1024 * 1024]) {
    const ss = sectorSizeBytes(bs);
    expect(ss * SECTORS_PER_BLOCK).toBe(bs);
    const block = Buffer.alloc(bs);
    for (let i = 0; i < bs; i += 997) block[i] = i & 0xff;
    const sectorCrcs = sectorCrcsOf(block, ss);
    expect(sectorCrcs).toHaveLength(16);
    expect(sectorCrcs[3]).toBe(blockIo.crc32c(block.subarray(3 * ss, 4 * ss)));
    const ref = { block: 0, sectorCrcs };
    expect(blockContentMatches(ref, block)).toBe(true);
    expect(blockContentMatches({ block: 0, crc: blockIo.crc32c(block) }, block)).toBe(true);
    block[5 * ss + 17] ^= 1;
    expect(blockContentMatches(ref, block)).toBe(false);
    expect(blockContentMatches({ block: 0, crc: sectorCrcs[0] }, block)).toBe(false);
    expect(firstBadSector(ref, block, 0, ss)).toBe(5);
    // A range of sectors starting past the damage checks clean.
    expect(firstBadSector(ref, block.subarray(6 * ss, 9 * ss), 6, ss)).toBe(-1);
    expect(firstBadSector(ref, block.subarray(4 * ss, 6 * ss), 4, ss)).toBe(5);
  }
});

test('an unwritten ref (fallocate) packs as [3][block: 6 bytes LE][crc of them] and a damaged one does not unpack', () => {
  const raw = packBlockRef({ block: 0x0a0b0c, unwritten: true });
  expect(raw.length).toBe(11);
  expect(raw[0]).toBe(3);
  expect(raw.readUIntLE(1, 6)).toBe(0x0a0b0c);
  expect(unpackBlockRef(raw)).toEqual({ block: 0x0a0b0c, unwritten: true });
  const damaged = Buffer.from(raw);
  damaged[2] ^= 1;
  expect(() => unpackBlockRef(damaged)).toThrow(expect.objectContaining({ code: 'METADATA_CORRUPT' }));
  // Its content is never read, so any bytes "match".
  expect(blockContentMatches({ block: 1, unwritten: true }, Buffer.alloc(65536, 7))).toBe(true);
});

test('a punched hole is inline content of no bytes: a hole that is an entry', () => {
  expect(isHoleRef(unpackBlockRef(packBlockRef(HOLE_REF)))).toBe(true);
  expect(isHoleRef(Buffer.from('x'))).toBe(false);
  expect(holdsData(HOLE_REF)).toBe(false);
  expect(holdsData({ block: 1, unwritten: true })).toBe(false);
  expect(holdsData({ block: 1, sectorCrcs: crcs })).toBe(true);
  expect(holdsData(Buffer.from('x'))).toBe(true);
});

test('an inode record keeps its birth time through pack/unpack; one written before birth times unpacks without one', () => {
  const older: InodeRecord = {
    v: 1, kind: 'file', mode: 0o100644, uid: 0, gid: 0, size: 3, nlink: 1, rdev: 0, atime: [1, 2], mtime: [3, 4], ctime: [5, 6],
    inherit: 0, mapped: 1, born: true, parent: 1, name: 'f',
  };
  const back = unpackInode(packInode(older));
  expect(back).toEqual(older);
  expect('btime' in back).toBe(false);
  const withBtime: InodeRecord = { ...older, btime: [7, 8], xattrs: { 'system.posix_acl_access': Buffer.from('02000000', 'hex') } };
  expect(unpackInode(packInode(withBtime))).toEqual(withBtime);
});
