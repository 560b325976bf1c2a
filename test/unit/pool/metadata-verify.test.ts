/**
 * The LMDB walker on good files and on each kind of damage it must find, and the gate in
 * front of liblmdb (MetadataEnv.open refuses a damaged file and leaves it untouched).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { proveMetadataSound, STAMP_FILE } from '../../../src/pool/metadata-gate';
import { verifyMetadataFile, type MetadataVerifyReport } from '../../../src/pool/metadata-verify';

const PS = 4096;
let dir: string;
let golden: string; // metadata dir of a closed pool
let goldenReport: MetadataVerifyReport;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-mdverify-'));
  const root = path.join(dir, 'pool');
  const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
  // A table big enough for branch pages, and values big enough for overflow pages.
  const t = pool.thinPool.table('verify-test');
  pool.thinPool.txn(() => {
    for (let i = 0; i < 2000; i++) t.put([i, 'key'], Buffer.alloc(40, i & 0xff));
    for (let i = 0; i < 3; i++) t.put([100000 + i], Buffer.alloc(9000, i + 1));
  });
  // A few more commits, so the free list and the previous snapshot differ from the live one.
  for (let i = 0; i < 5; i++) pool.thinPool.txn(() => t.put([i, 'key'], Buffer.alloc(40, 0xaa)));
  await pool.close();
  golden = path.join(root, 'metadata');
  goldenReport = verifyMetadataFile(path.join(golden, 'data.mdb'), { roles: true });
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A copy of the golden metadata directory (used pages only; same sparse length), changed by `damage`. */
function copyWith(damage: (file: Buffer) => void): string {
  const out = fs.mkdtempSync(path.join(dir, 'copy-'));
  fs.copyFileSync(path.join(golden, 'FORMAT'), path.join(out, 'FORMAT'));
  const from = path.join(golden, 'data.mdb');
  const used = Buffer.alloc((goldenReport.lastPgno + 1) * PS);
  const fd = fs.openSync(from, 'r');
  fs.readSync(fd, used, 0, used.length, 0);
  fs.closeSync(fd);
  damage(used);
  fs.writeFileSync(path.join(out, 'data.mdb'), used);
  fs.truncateSync(path.join(out, 'data.mdb'), fs.statSync(from).size);
  return out;
}

const verify = (mdDir: string) => verifyMetadataFile(path.join(mdDir, 'data.mdb'));
const pagesWithRole = (role: string) => goldenReport.roles!.flatMap((r, i) => (r === role ? [i] : []));
const page = (file: Buffer, pgno: number) => file.subarray(pgno * PS, (pgno + 1) * PS);
const flagsOf = (file: Buffer, pgno: number) => page(file, pgno).readUInt16LE(18);
const liveMetaPgno = () => goldenReport.liveMeta!;

test('a good file is sound: both metas, every database, counts and free-list accounting agree', () => {
  expect(goldenReport).toMatchObject({ openable: true, sound: true, damage: [], pageSizeBytes: PS });
  expect(goldenReport.databases).toEqual(expect.arrayContaining(['bmap', 'inodes', 'dirents', 'layers', 'space-map', 'verify-test']));
  expect(goldenReport.metas.every((m) => m.sound)).toBe(true);
  const roles = goldenReport.roles!;
  expect(roles.filter((r) => r === 'verify-test').length).toBeGreaterThan(3); // branch + leaves
  expect(roles.filter((r) => r === 'verify-test overflow').length).toBeGreaterThanOrEqual(3);
  expect(roles.filter((r) => r === 'free page').length).toBeGreaterThan(0);
  expect(roles).not.toContain('unused');
});

test('a damaged meta page: not openable, named, even when the other is sound', () => {
  for (const m of [0, 1]) {
    const r = verify(copyWith((f) => f.writeUInt32LE(0x12345678, m * PS + 24))); // magic
    expect(r.openable).toBe(false);
    expect(r.damage).toEqual([expect.objectContaining({ pgno: m, db: 'meta', scope: 'live' })]);
  }
  // The second half of page 0 is where an overlapping-sync meta copy would be, which LMDB may pick.
  const half = verify(copyWith((f) => f.writeUInt32LE(0xbeefc0de, PS / 2 + 24)));
  expect(half.openable).toBe(false);
  expect(half.damage).toEqual([expect.objectContaining({ pgno: 0, db: 'meta', message: expect.stringMatching(/second half of meta page 0/) })]);
  // The older meta claims a higher txnid and a last page past the file: LMDB would pick it.
  const older = 1 - liveMetaPgno();
  const r = verify(copyWith((f) => {
    f.writeUInt32LE(0x7fffffff, older * PS + 24 + 24 + 96 + 8); // txnid
    f.writeUInt32LE(0x7fffffff, older * PS + 24 + 24 + 96); // last_pg
  }));
  expect(r.openable).toBe(false);
  expect(r.damage.some((d) => d.pgno === older && d.db === 'meta')).toBe(true);
});

test('tree pages: wrong page number, bad flags, bad bounds, node outside the page, keys out of order, child out of range, newer txnid', () => {
  const raw = readUsed(path.join(golden, 'data.mdb'));
  const own = pagesWithRole('verify-test');
  const leaves = own.filter((p) => flagsOf(raw, p) === 0x02 && page(raw, p).readUInt16LE(20) >= 4);
  const branch = own.find((p) => flagsOf(raw, p) === 0x01)!;
  expect(leaves.length).toBeGreaterThan(0);
  expect(branch).toBeDefined();
  const L = leaves[0];
  const cases: [string, (f: Buffer) => void, RegExp][] = [
    ['page number', (f) => f.writeUInt32LE(L + 1, L * PS), /page header says page/],
    ['flags', (f) => f.writeUInt16LE(0x08, L * PS + 18), /page flags 0x8/],
    ['bounds', (f) => f.writeUInt16LE(PS, L * PS + 22), /free-space bounds/],
    ['node offset', (f) => f.writeUInt16LE(PS - 2, L * PS + 24), /node 0 offset/],
    ['key order', (f) => {
      const a = f.readUInt16LE(L * PS + 24);
      f.writeUInt16LE(f.readUInt16LE(L * PS + 26), L * PS + 24);
      f.writeUInt16LE(a, L * PS + 26);
    }, /not greater|outside the range/],
    ['child', (f) => {
      const node = branch * PS + 24 + f.readUInt16LE(branch * PS + 24 + 2); // node 1
      f.writeUInt16LE(0xffff, node + 2); // pgno hi word
    }, /points at page/],
    ['txnid', (f) => f.writeUInt32LE(0x7ffffff0, L * PS + 8), /newer than the snapshot/],
  ];
  for (const [name, damage, message] of cases) {
    const r = verify(copyWith(damage));
    expect({ name, openable: r.openable }).toEqual({ name, openable: false });
    const hit = r.damage.find((d) => d.scope === 'live' && d.db === 'verify-test');
    expect({ name, message: hit?.message }).toEqual({ name, message: expect.stringMatching(message) });
    expect([L, branch]).toContain(hit!.pgno);
  }
});

test('overflow runs: wrong page count or header', () => {
  const first = goldenReport.roles!.findIndex((r, i) => r === 'verify-test' && goldenReport.roles![i + 1] === 'verify-test overflow');
  expect(first).toBeGreaterThan(1);
  let r = verify(copyWith((f) => f.writeUInt32LE(1, first * PS + 20)));
  expect(r.damage).toEqual(expect.arrayContaining([expect.objectContaining({ pgno: first, db: 'verify-test', message: expect.stringMatching(/overflow run holds 1 pages/) })]));
  r = verify(copyWith((f) => f.writeUInt16LE(0x02, first * PS + 18)));
  expect(r.openable).toBe(false);
  expect(r.damage[0]).toMatchObject({ pgno: first, message: expect.stringMatching(/not an overflow page/) });
});

test('a live page listed free (LMDB would hand it out again) and a file cut short', () => {
  const roles = goldenReport.roles!;
  const freeLeaf = roles.findIndex((r) => r === 'free-list');
  expect(freeLeaf).toBeGreaterThan(1);
  const victim = roles.findIndex((r) => r === 'layers');
  expect(victim).toBeGreaterThan(1);
  const r = verify(copyWith((f) => {
    // First node's value: IDL [count, pgno...]; point its first page at a live page.
    const p = freeLeaf * PS;
    const node = p + 24 + f.readUInt16LE(p + 24);
    const ksize = f.readUInt16LE(node + 6);
    f.writeUInt32LE(victim, node + 8 + ksize + 8);
    f.writeUInt32LE(0, node + 8 + ksize + 12);
  }));
  expect(r.openable).toBe(false);
  expect(r.damage).toEqual(expect.arrayContaining([expect.objectContaining({ pgno: victim, db: 'free-list', message: expect.stringMatching(/listed free but is in use/) })]));

  const cut = copyWith(() => undefined);
  fs.truncateSync(path.join(cut, 'data.mdb'), 3 * PS);
  const rc = verify(cut);
  expect(rc.openable).toBe(false);
  expect(rc.damage.some((d) => /past the end of the file/.test(d.message))).toBe(true);
});

test('damage only in the previous snapshot: openable, reported with scope previous', () => {
  const prev = goldenReport.roles!.findIndex((r) => r.startsWith('previous '));
  expect(prev).toBeGreaterThan(1);
  const r = verify(copyWith((f) => f.fill(0x5a, prev * PS, (prev + 1) * PS)));
  expect(r).toMatchObject({ openable: true, sound: false });
  expect(r.damage).toEqual([expect.objectContaining({ pgno: prev, scope: 'previous' })]);
});

test('random bytes in any page that holds metadata are found; a free page is harmless', () => {
  const roles = goldenReport.roles!;
  for (let p = 0; p < roles.length; p++) {
    const r = verify(copyWith((f) => crypto.randomFillSync(f, p * PS, PS)));
    if (roles[p] === 'free page' || roles[p].endsWith(' overflow')) continue; // no header: value bytes carry CRCs
    expect({ p, role: roles[p], found: r.damage.length > 0 }).toEqual({ p, role: roles[p], found: true });
    if (!roles[p].startsWith('previous ')) expect({ p, openable: r.openable }).toEqual({ p, openable: false });
  }
});

test('the gate: Pool.open refuses a damaged file with METADATA_CORRUPT and leaves it byte for byte; a stamp skips the walk of an unchanged file', async () => {
  const layersPage = goldenReport.roles!.findIndex((r) => r === 'layers');
  const md = copyWith((f) => f.writeUInt32LE(0xdeadbeef, layersPage * PS));
  const root = path.join(dir, 'gate');
  fs.mkdirSync(root);
  fs.mkdirSync(path.join(root, 'data'));
  for (const f of fs.readdirSync(path.join(golden, '..', 'data'))) fs.linkSync(path.join(golden, '..', 'data', f), path.join(root, 'data', f));
  fs.renameSync(md, path.join(root, 'metadata'));
  const file = path.join(root, 'metadata', 'data.mdb');
  const hash = () => crypto.createHash('sha256').update(readUsed(file)).digest('hex');
  const before = hash();
  await expect(Pool.open(root)).rejects.toMatchObject({ code: 'METADATA_CORRUPT', message: expect.stringContaining(`page ${layersPage} (layers)`) });
  await expect(Pool.open(root)).rejects.toMatchObject({ message: expect.stringContaining('dmfs check --repair --from-backup') });
  expect(hash()).toBe(before);
  expect(fs.existsSync(path.join(root, 'metadata', STAMP_FILE))).toBe(false);

  // A sound file: proved once, then skipped while unchanged; a write makes the next open walk.
  const good = copyWith(() => undefined);
  expect(proveMetadataSound(good, 'stamp')).toMatchObject({ sound: true });
  expect(fs.existsSync(path.join(good, STAMP_FILE))).toBe(true);
  expect(proveMetadataSound(good, 'stamp')).toBeNull();
  expect(proveMetadataSound(good, 'full')).toMatchObject({ sound: true });
  const fd = fs.openSync(path.join(good, 'data.mdb'), 'r+');
  fs.writeSync(fd, Buffer.from([0xff, 0xff]), 0, 2, layersPage * PS + 20);
  fs.closeSync(fd);
  expect(() => proveMetadataSound(good, 'stamp')).toThrow(expect.objectContaining({ code: 'METADATA_CORRUPT' }));
});

function readUsed(file: string): Buffer {
  const b = Buffer.alloc((goldenReport.lastPgno + 1) * PS);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, b.length, 0);
  fs.closeSync(fd);
  return b;
}
