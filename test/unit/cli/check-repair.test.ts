/**
 * `dmfs check --repair` on damaged metadata, through real CLI processes: it keeps data a
 * backup or a damaged record still owns (naming the files) unless --force; --from-backup
 * rolls back to the newest backup that checks clean and says what is lost; a check after
 * any repair is clean or says why not, never "run check --repair".
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { formatRestore } from '../../../src/cli/commands/check';
import { ThinPool } from '../../../src/pool/thin-pool';
import { S_IFREG } from '../../../src/store/layer-store';
import { DMFS_BIN, REPO_ROOT, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function dmfsJson(root: string, ...args: string[]) {
  const r = dmfs(root, ...args, '--json');
  return { code: r.code, json: JSON.parse(r.stdout), stderr: r.stderr };
}

const CONTENT = Buffer.alloc(5 * 65536 + 1234);
for (let i = 0; i < CONTENT.length; i++) CONTENT[i] = (i * 7 + (i >> 16)) & 0xff;

/** An image 'img' with /etc/data (6 blocks of CONTENT) and /etc/small, made by CLI-like API use and closed (backup taken). */
async function poolWithFile(root: string): Promise<{ ino: number }> {
  const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
  await pool.store.createLayer('img', { kind: 'image', building: true });
  const l = await pool.store.openLayer('img');
  const etc = await l.mkdir(l.rootIno, 'etc', { mode: 0o040755, uid: 0, gid: 0 });
  const f = await l.mknod(etc.ino, 'data', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l.write(f.ino, CONTENT, 0);
  const s = await l.mknod(etc.ino, 'small', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l.write(s.ino, Buffer.alloc(70000, 3), 0);
  await l.close();
  await pool.store.sealLayer('img');
  await pool.close();
  return { ino: f.ino };
}

/** Test-only damage through the store: `fn` edits the block map of inode `ino` in one transaction. No backup follows. */
async function damageBlockMap(root: string, ino: number, fn: (bmap: ReturnType<Pool['thinPool']['table']>, keys: number[][]) => void): Promise<void> {
  const pool = await Pool.open(root);
  const bmap = pool.thinPool.table('bmap');
  const keys = [...bmap.keys([0], [Number.MAX_SAFE_INTEGER])].map((k) => k as number[]).filter((k) => k[1] === ino);
  expect(keys.length).toBe(6);
  pool.thinPool.txn(() => fn(bmap, keys));
  await pool.close();
}

async function readFile(root: string, layer: string, p: string): Promise<Buffer> {
  const pool = await Pool.open(root);
  try {
    const l = await pool.store.openLayer(layer, { readOnly: true });
    let ino = l.rootIno;
    for (const part of p.split('/').filter(Boolean)) ino = (await l.lookup(ino, part)).ino;
    const size = (await l.getattr(ino)).sizeBytes;
    const buf = Buffer.alloc(size);
    expect(await l.read(ino, buf, 0)).toBe(size);
    await l.close();
    return buf;
  } finally {
    await pool.close();
  }
}

function usedBytes(root: string): number {
  return dmfsJson(root, 'info').json.dataSpaceUsedBytes;
}

/** Used blocks in the space map, read through the thin pool alone (works where the layer store cannot open). */
async function usedBlocks(root: string): Promise<number> {
  const thin = await ThinPool.open(root);
  thin.backupsSuspended = true;
  try {
    return thin.space().usedBlocks;
  } finally {
    await thin.close();
  }
}

const formatted = (r: Parameters<typeof formatRestore>[0]) => formatRestore(r);

let work: string;
let root: string;
beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-repair-'));
  root = path.join(work, 'pool');
});
afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

describe('check --repair never destroys data', () => {
  test('lost block-map entries: repair keeps the blocks and names the file; --from-backup restores it byte-identical', async () => {
    const { ino } = await poolWithFile(root);
    await damageBlockMap(root, ino, (bmap, keys) => keys.forEach((k) => bmap.del(k)));
    const used = usedBytes(root);

    const check = dmfsJson(root, 'check');
    expect(check.code).toBe(1);
    expect(check.json.problems.map((p: { kind: string }) => p.kind)).toContain('UNREFERENCED_DATA');
    expect(check.json.protectedFiles).toEqual([expect.objectContaining({ layer: 'img', path: '/etc/data', blocks: expect.any(Array) })]);
    // Five whole blocks in data blocks; the 1234-byte tail is kept inline in the metadata.
    expect(check.json.protectedFiles[0].blocks).toHaveLength(5);

    const repair = dmfs(root, 'check', '--repair');
    expect(repair.code).toBe(1);
    expect(repair.stdout).toMatch(/img:\/etc\/data \(5 blocks, mapped by backup /);
    expect(repair.stdout).toMatch(/--force/);
    expect(repair.stdout).toMatch(/--from-backup/);
    expect(repair.stdout).not.toMatch(/run 'dmfs check --repair'/);
    expect(usedBytes(root)).toBe(used); // nothing freed
    // A second repair finds the same thing, and still does not send the user round in circles.
    const again = dmfs(root, 'check', '--repair');
    expect(again.code).toBe(1);
    expect(again.stdout).not.toMatch(/run 'dmfs check --repair'/);
    expect(usedBytes(root)).toBe(used);

    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(restore.json.check.ok).toBe(true);
    expect(restore.json.skipped).toEqual([]);
    expect(restore.json.lost.currentReadable).toBe(true);
    expect(restore.json.lost.files).toEqual([{ layer: 'img', path: '/etc/data', change: 'changed' }]);
    expect(fs.existsSync(path.join(restore.json.damagedDir, 'data.mdb'))).toBe(true);

    expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    expect((await readFile(root, 'img', '/etc/small')).equals(Buffer.alloc(70000, 3))).toBe(true);
    const after = dmfs(root, 'check', '--data');
    expect(after.code).toBe(0);
    expect(after.stdout).toMatch(/pool is consistent/);
  });

  test('a block-map record whose value is damaged: no unmapped block is freed without --force, the file is named', async () => {
    const { ino } = await poolWithFile(root);
    // Flip a byte in one record's value: it no longer decodes (its block is unknown).
    await damageBlockMap(root, ino, (bmap, keys) => {
      const raw = Buffer.from(bmap.get(keys[2])!);
      raw[raw.length - 1] ^= 0x5a;
      raw[0] ^= 0xff;
      bmap.put(keys[2], raw);
    });
    // No backup knows about it in this case: the pool is backed up before the file exists.
    for (const b of fs.readdirSync(path.join(root, 'metadata', 'backups'))) fs.rmSync(path.join(root, 'metadata', 'backups', b), { recursive: true });
    const used = usedBytes(root);

    const repair = dmfsJson(root, 'check', '--repair');
    expect(repair.code).toBe(1);
    const kinds = repair.json.problems.map((p: { kind: string }) => p.kind);
    expect(kinds).toContain('CORRUPT_RECORD');
    expect(kinds).toContain('UNREFERENCED_DATA');
    expect(repair.json.unknownOwnerBlocks).toBe(1);
    expect(repair.json.protectedFiles).toEqual([expect.objectContaining({ layer: 'img', path: '/etc/data' })]);
    expect(usedBytes(root)).toBe(used);
    const text = dmfs(root, 'check', '--repair');
    expect(text.stdout).toMatch(/img:\/etc\/data \(damaged block map\)/);
    expect(text.stdout).toMatch(/no metadata backup/i);
    expect(text.stdout).not.toMatch(/run 'dmfs check --repair'/);

    // --force drops what was kept: one run, then a check is clean.
    const forced = dmfsJson(root, 'check', '--repair', '--force');
    expect(forced.code).toBe(0);
    expect(forced.json.remaining).toEqual([]);
    expect(usedBytes(root)).toBe(used - 65536);
    expect(dmfs(root, 'check').code).toBe(0);
  });

  test('a damaged layer record: its records keep their blocks (UNKNOWN_SEGMENT), nothing is freed, --from-backup brings the layer back', async () => {
    await poolWithFile(root);
    const used = await usedBlocks(root);
    const pool = await Pool.open(root);
    const layers = pool.thinPool.table('layers');
    const imgKey = [...layers.range(0, Number.MAX_SAFE_INTEGER)].map((e) => e.key as number).find((k) => k !== 1)!;
    pool.thinPool.txn(() => {
      const raw = Buffer.from(layers.get(imgKey)!);
      raw[2] ^= 0x20;
      layers.put(imgKey, raw);
    });
    await pool.close();

    const repair = dmfsJson(root, 'check', '--repair');
    expect(repair.code).toBe(1);
    const kinds = new Set(repair.json.problems.map((p: { kind: string }) => p.kind));
    expect(kinds).toEqual(new Set(['CORRUPT_RECORD', 'UNKNOWN_SEGMENT']));
    expect(repair.json.problems.every((p: { repaired: boolean }) => !p.repaired)).toBe(true);
    expect(await usedBlocks(root)).toBe(used);
    expect(dmfsJson(root, 'ls').json.error.code).toBe('METADATA_CORRUPT'); // the damage is real
    const text = dmfs(root, 'check', '--repair');
    expect(text.stdout).toMatch(/layer record .* only 'dmfs check --repair --from-backup' can bring it back/);
    expect(text.stdout).not.toMatch(/run 'dmfs check --repair'/);

    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    expect(dmfs(root, 'check').code).toBe(0);
  });

  test('--from-backup skips a backup that does not check clean, reports layers created since, and keeps their data out', async () => {
    const { ino } = await poolWithFile(root);
    // A layer made while backups were off: the newest good backup does not know it.
    expect(dmfs(root, 'pool', 'set', 'dmfs.metadata_backups=0').code).toBe(0);
    expect(dmfs(root, 'create', 'late', '--from', 'img').code).toBe(0);
    expect(dmfs(root, 'pool', 'set', 'dmfs.metadata_backups=5').code).toBe(0); // its close backs up 'late' (still good)
    const good = dmfsJson(root, 'check', '--backups').json;
    expect(good[0].layers).toBe(3);
    // Drop that newest backup to play "late was created after the last backup", then damage and back up the damage.
    fs.rmSync(good[0].dir, { recursive: true });
    await damageBlockMap(root, ino, (bmap, keys) => keys.forEach((k) => bmap.del(k)));
    const p = await Pool.open(root);
    await p.thinPool.backupMetadata({ force: true, reason: 'damaged' });
    await p.close();
    const names = dmfsJson(root, 'check', '--backups').json.map((b: { name: string }) => b.name);
    expect(names[0]).toMatch(/-damaged$/);

    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(restore.json.skipped.map((s: { name: string }) => s.name)).toEqual([names[0]]);
    expect(restore.json.backup.name).toBe(names[1]);
    expect(restore.json.lost.layersCreated).toEqual([expect.objectContaining({ name: 'late', kind: 'container' })]);
    const ls = dmfsJson(root, 'ls').json.map((l: { name: string }) => l.name);
    expect(ls).toEqual(['base', 'img']);
    expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    // Ids handed out since are not reused: a new layer gets an id past 'late'.
    const created = dmfsJson(root, 'create', 'next', '--from', 'img').json;
    expect(created.id).toBeGreaterThan(3);
    expect(dmfs(root, 'check').code).toBe(0);
    const text = dmfs(root, 'check', '--backups');
    expect(text.stdout).toMatch(/restore/);
  });

  test('--from-backup refuses while another process has the pool open, and changes nothing', async () => {
    const { ino } = await poolWithFile(root);
    await damageBlockMap(root, ino, (bmap, keys) => keys.forEach((k) => bmap.del(k)));
    const holder: ChildProcess = spawn(process.execPath, ['-e', `
      const { Pool } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/api'))});
      Pool.open(${JSON.stringify(root)}).then(() => { process.stdout.write('open\\n'); setInterval(() => {}, 1000); });`], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
      const mdb = path.join(root, 'metadata', 'data.mdb');
      const before = { ino: fs.statSync(mdb).ino, used: usedBytes(root) };
      for (const args of [['check', '--repair', '--from-backup'], ['check', '--repair']]) {
        const r = dmfsJson(root, ...args);
        expect(r.code).toBe(1);
        expect(r.json.error.code).toBe('POOL_LOCKED');
      }
      expect(fs.readdirSync(path.join(root, 'metadata')).filter((n) => n.startsWith('damaged-') || n.startsWith('restore-'))).toEqual([]);
      expect({ ino: fs.statSync(mdb).ino, used: usedBytes(root) }).toEqual(before);
    } finally {
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    }
  });

  test('a real leak (a block nobody maps, in no backup) is freed in one run; the next check is clean', async () => {
    await poolWithFile(root);
    const thin = await ThinPool.open(root);
    thin.backupsSuspended = true;
    // A block taken and recorded as consumed, but never mapped: what a bug would leave.
    thin.txn(() => thin.consumeBlock(thin.takeBlock()!));
    await thin.close();
    const used = await usedBlocks(root);
    const repair = dmfsJson(root, 'check', '--repair');
    expect(repair.code).toBe(0);
    expect(repair.json.problems).toEqual([expect.objectContaining({ kind: 'LEAKED_BLOCK', repaired: true })]);
    expect(repair.json.remaining).toEqual([]);
    expect(await usedBlocks(root)).toBe(used - 1);
    const after = dmfs(root, 'check');
    expect(after.code).toBe(0);
    expect(after.stdout).toMatch(/pool is consistent/);
  });

  test('after a check finds damage, backups of the damaged metadata do not prune the good ones away', async () => {
    const { ino } = await poolWithFile(root);
    const good = dmfsJson(root, 'check', '--backups').json[0].name;
    await damageBlockMap(root, ino, (bmap, keys) => keys.forEach((k) => bmap.del(k)));
    expect(dmfs(root, 'check').code).toBe(1); // sets the hold
    // Work goes on on the damaged pool: six more backups, past dmfs.metadata_backups=5.
    for (let i = 0; i < 6; i++) expect(dmfs(root, 'create', `c${i}`, '--from', 'img').code).toBe(0);
    const names = dmfsJson(root, 'check', '--backups').json.map((b: { name: string }) => b.name);
    expect(names).toHaveLength(7);
    expect(names[names.length - 1]).toBe(good);

    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(restore.json.backup.name).toBe(good);
    expect(restore.json.skipped).toHaveLength(6); // each copy of the damage fails its check
    expect(restore.json.lost.layersCreated.map((l: { name: string }) => l.name).sort()).toEqual(['c0', 'c1', 'c2', 'c3', 'c4', 'c5']);
    expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    expect(dmfs(root, 'check').code).toBe(0); // clean: the hold is gone, pruning resumes
    expect(dmfs(root, 'create', 'again', '--from', 'img').code).toBe(0);
    expect(dmfsJson(root, 'check', '--backups').json).toHaveLength(5);
  });

  test('metadata file whose header is destroyed (LMDB crashes on it): --from-backup still restores, says what it cannot know', async () => {
    await poolWithFile(root);
    const fd = fs.openSync(path.join(root, 'metadata', 'data.mdb'), 'r+');
    fs.writeSync(fd, Buffer.alloc(16384), 0, 16384, 0);
    fs.closeSync(fd);
    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(restore.json.lost.currentReadable).toBe(false);
    const text = dmfs(root, 'check', '--backups');
    expect(text.code).toBe(0);
    expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    expect(dmfs(root, 'check').code).toBe(0);
    // The destroyed file is kept aside, byte for byte.
    const kept = Buffer.alloc(16384, 1);
    const kfd = fs.openSync(path.join(restore.json.damagedDir, 'data.mdb'), 'r');
    fs.readSync(kfd, kept, 0, 16384, 0);
    fs.closeSync(kfd);
    expect(kept.equals(Buffer.alloc(16384))).toBe(true);
  });

  test('rolling back past a removal: blocks reused since are reported as damaged files; --data refuses such a backup', async () => {
    await poolWithFile(root);
    const first = dmfsJson(root, 'check', '--backups').json[0];
    expect(dmfs(root, 'rm', 'img').code).toBe(0);
    // A new image reuses the freed blocks with other bytes.
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'other'), Buffer.alloc(6 * 65536, 0x42));
    expect(dmfs(root, 'import', src, '--name', 'img2').code).toBe(0);
    // Keep only the backup from before the removal.
    for (const b of dmfsJson(root, 'check', '--backups').json) if (b.name !== first.name) fs.rmSync(b.dir, { recursive: true });

    const strict = dmfsJson(root, 'check', '--repair', '--from-backup', '--data');
    expect(strict.code).toBe(1);
    expect(strict.json.error.code).toBe('METADATA_CORRUPT');
    expect(dmfsJson(root, 'ls').json.map((l: { name: string }) => l.name)).toEqual(['base', 'img2']); // unchanged

    const restore = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(restore.json.lost.layersCreated.map((l: { name: string }) => l.name)).toEqual(['img2']);
    expect(restore.json.lost.layersRemoved.map((l: { name: string }) => l.name)).toEqual(['img']);
    expect(restore.json.lost.overwritten).toEqual(expect.arrayContaining([{ layer: 'img', path: '/etc/data' }]));
    const text = formatted(restore.json);
    expect(text).toMatch(/Damaged: .* reused after it/);
    expect(dmfs(root, 'check').code).toBe(0); // metadata consistent; the data check names the reused blocks
    const data = dmfsJson(root, 'check', '--data');
    expect(data.code).toBe(1);
    expect(data.json.problems.map((p: { kind: string }) => p.kind)).toContain('DATA_CORRUPT');
  });

  test('a damaged inode record: its entry is not "dangling", nothing is dropped; --force drops the file whole, in one run', async () => {
    const { ino } = await poolWithFile(root);
    const pool = await Pool.open(root);
    const inodes = pool.thinPool.table('inodes');
    const key = [...inodes.keys([0], [Number.MAX_SAFE_INTEGER])].map((k) => k as number[]).find((k) => k[1] === ino)!;
    pool.thinPool.txn(() => {
      const raw = Buffer.from(inodes.get(key)!);
      raw[3] ^= 0x40;
      inodes.put(key, raw);
    });
    await pool.close();
    const used = usedBytes(root);

    const repair = dmfsJson(root, 'check', '--repair');
    expect(repair.code).toBe(1);
    const kinds = repair.json.problems.map((p: { kind: string }) => p.kind);
    expect(kinds).toContain('CORRUPT_RECORD');
    expect(kinds).not.toContain('DANGLING_ENTRY');
    expect(usedBytes(root)).toBe(used);

    const forced = dmfsJson(root, 'check', '--repair', '--force');
    expect(forced.code).toBe(0);
    expect(forced.json.remaining).toEqual([]);
    expect(usedBytes(root)).toBe(used - 5 * 65536);
    expect(dmfs(root, 'check').code).toBe(0);
    const p2 = await Pool.open(root);
    const l = await p2.store.openLayer('img', { readOnly: true });
    const etc = await l.lookup(l.rootIno, 'etc');
    expect(await l.lookup(etc!.ino, 'data')).toBeNull(); // gone whole: no name left pointing nowhere
    await l.close();
    await p2.close();
    expect((await readFile(root, 'img', '/etc/small')).equals(Buffer.alloc(70000, 3))).toBe(true);
  });

  test('a restore killed at any point leaves a pool that opens and checks clean, old or restored', async () => {
    await poolWithFile(root);
    let sawDamagedDir = false;
    for (const delayMs of [100, 250, 400, 500, 560, 620, 680, 750, 2500]) {
      const child = spawn(process.execPath, [DMFS_BIN, 'check', '--repair', '--from-backup', '--root', root], { stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, delayMs));
      child.kill('SIGKILL'); // a no-op when it already finished
      await exited;
      sawDamagedDir ||= fs.readdirSync(path.join(root, 'metadata')).some((n) => n.startsWith('damaged-'));
      const check = dmfs(root, 'check');
      expect({ delayMs, code: check.code, out: check.stdout.split('\n').pop() }).toMatchObject({ delayMs, code: 0 });
      expect((await readFile(root, 'img', '/etc/data')).equals(CONTENT)).toBe(true);
    }
    // Some kill landed after the swap began (or the restore finished): the old file was kept aside.
    expect(sawDamagedDir).toBe(true);
  });

  test('usage: --force and --from-backup go with --repair, not together; no backups is NOT_FOUND', async () => {
    await poolWithFile(root);
    for (const args of [['check', '--force'], ['check', '--from-backup'], ['check', '--repair', '--force', '--from-backup'], ['check', '--backups', '--repair']]) {
      const r = dmfsJson(root, ...args);
      expect(r.code).toBe(2);
      expect(r.json.error.code).toBe('USAGE');
    }
    fs.rmSync(path.join(root, 'metadata', 'backups'), { recursive: true });
    const r = dmfsJson(root, 'check', '--repair', '--from-backup');
    expect(r.code).toBe(1);
    expect(r.json.error.code).toBe('NOT_FOUND');
    expect(dmfs(root, 'check').code).toBe(0);
  });
});
