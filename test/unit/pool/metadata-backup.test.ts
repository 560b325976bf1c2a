/**
 * Metadata backups (src/pool/metadata-backup.ts): taken at layer create/commit/rm/import
 * and when a writable layer closes (unmount), by real CLI processes; pruned to
 * dmfs.metadata_backups; none when nothing changed; a backup killed mid-way is not listed.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { listBackups, MetadataSnapshot } from '../../../src/pool/metadata-backup';
import { verifyMetadataFile } from '../../../src/pool/metadata-verify';
import { S_IFREG } from '../../../src/store/layer-store';
import { DMFS_BIN, REPO_ROOT, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function listed(root: string): { name: string; reasons: string[]; layers: number | null; txnId: number; sizeBytes: number }[] {
  const r = dmfs(root, 'check', '--backups', '--json');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout);
}

let work: string;
beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-backup-'));
});
afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

describe('metadata backups', () => {
  test('a backup is a compacted copy the metadata walker proves sound, overflow pages included; a pool restored from it opens', async () => {
    const root = path.join(work, 'pool');
    const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const f = await l.mknod(l.rootIno, 'big', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.write(f.ino, Buffer.alloc(40 * 65536, 5), 0); // a space-map chunk large enough for an overflow run
    await l.close();
    await pool.close();
    const [newest] = listBackups(path.join(root, 'metadata'));
    const report = verifyMetadataFile(newest.file, { roles: true });
    expect(report.damage).toEqual([]);
    expect(report.roles!.some((r) => /overflow/.test(r))).toBe(true);
    const restore = dmfs(root, 'check', '--repair', '--from-backup');
    expect(restore.code).toBe(0);
    expect(dmfs(root, 'check').code).toBe(0);
  });

  test('one backup after each create, commit, rm, import and unmount; none when nothing changed', async () => {
    const root = path.join(work, 'pool');
    expect(dmfs(root, 'pool', 'create', '--size', '1G').code).toBe(0);
    expect(listed(root)).toEqual([]); // a new, empty pool has nothing worth keeping yet

    expect(dmfs(root, 'create', 'c1').code).toBe(0);
    let b = listed(root);
    expect(b).toHaveLength(1);
    expect(b[0]).toMatchObject({ reasons: ['create'], layers: 2 });

    // Reading commands change nothing: no backup.
    for (const args of [['ls'], ['info'], ['inspect', 'c1'], ['check']]) expect(dmfs(root, ...args).code).toBe(0);
    expect(listed(root)).toHaveLength(1);

    expect(dmfs(root, 'commit', 'c1', 'img1').code).toBe(0);
    b = listed(root);
    expect(b).toHaveLength(2);
    expect(b[0]).toMatchObject({ reasons: ['commit'], layers: 3 });

    const src = path.join(work, 'src');
    fs.mkdirSync(path.join(src, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(src, 'etc', 'hosts'), '127.0.0.1 localhost\n');
    expect(dmfs(root, 'import', src, '--name', 'dirimg').code).toBe(0);
    b = listed(root);
    expect(b).toHaveLength(3);
    expect(b[0].reasons).toContain('import');
    expect(b[0].layers).toBe(4);

    expect(dmfs(root, 'rm', 'dirimg').code).toBe(0);
    b = listed(root);
    expect(b).toHaveLength(4);
    expect(b[0]).toMatchObject({ reasons: ['rm'], layers: 3 });

    // A writable layer opened and closed (what the mount daemon does around a mount) marks an unmount.
    const pool = await Pool.open(root);
    const l = await pool.store.openLayer('c1');
    const f = await l.mknod(l.rootIno, 'new-file', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.write(f.ino, Buffer.from('written in the mount'), 0);
    await l.close();
    await pool.close();
    b = listed(root);
    expect(b).toHaveLength(5);
    expect(b[0].reasons).toEqual(['unmount']);

    // Newest first, each a complete copy with the FORMAT marker and mode 0600.
    const txns = b.map((x) => x.txnId);
    expect([...txns].sort((x, y) => y - x)).toEqual(txns);
    for (const x of listBackups(path.join(root, 'metadata'))) {
      expect(fs.statSync(x.file).mode & 0o777).toBe(0o600);
      expect(fs.readFileSync(path.join(x.dir, 'FORMAT'), 'utf8')).toMatch(/^dmfs-metadata-1/);
    }
    // The newest copy holds the file written in the "mount".
    const snap = MetadataSnapshot.open(listBackups(path.join(root, 'metadata'))[0].dir);
    const names = [...snap.table('dirents').range([0], [Number.MAX_SAFE_INTEGER])].map((e) => (e.key as unknown[])[2]);
    await snap.close();
    expect(names).toContain('new-file');
  });

  test('dmfs.metadata_backups keeps the newest N; 0 turns backups off; bad values are BAD_OPTION', () => {
    const root = path.join(work, 'pool');
    expect(dmfs(root, 'pool', 'create', '--size', '1G', '--opt', 'dmfs.metadata_backups=2').code).toBe(0);
    for (const n of ['a', 'b', 'c', 'd']) expect(dmfs(root, 'create', n).code).toBe(0);
    const b = listed(root);
    expect(b).toHaveLength(2);
    expect(b.map((x) => x.layers)).toEqual([5, 4]); // the two newest: after creating d, after c

    expect(JSON.parse(dmfs(root, 'info', '--json').stdout)).toMatchObject({ metadataBackupsKept: 2, metadataBackupCount: 2 });
    expect(dmfs(root, 'info').stdout).toMatch(/Metadata Backups:\s+2 \(keeps 2, dmfs.metadata_backups\)/);
    expect(dmfs(root, 'pool', 'set', 'dmfs.metadata_backups=0').code).toBe(0);
    expect(dmfs(root, 'create', 'e').code).toBe(0);
    expect(listed(root).map((x) => x.layers)).toEqual([5, 4]);

    for (const bad of ['dmfs.metadata_backups=-1', 'dmfs.metadata_backups=many', 'dmfs.metadata_backups=101']) {
      const r = dmfs(root, 'pool', 'set', bad, '--json');
      expect(r.code).toBe(2);
      expect(JSON.parse(r.stdout).error.code).toBe('BAD_OPTION');
    }
    // Turned back on, the change made while off (creating e) is still marked: the next close backs it up.
    expect(dmfs(root, 'pool', 'set', 'dmfs.metadata_backups=5').code).toBe(0);
    expect(listed(root).map((x) => x.layers)).toEqual([6, 5, 4]);
    const table = dmfs(root, 'check', '--backups');
    expect(table.code).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+CREATED \(UTC\)\s+REASON\s+LAYERS\s+SIZE$/);
    expect(lines).toHaveLength(4);
    expect(lines[1]).toMatch(/-create\s+\S+\s+create\s+6\s/);
  });

  test('a backup killed part-way is never listed, and the next backup clears its leftovers', async () => {
    const root = path.join(work, 'pool');
    const pool = await Pool.create({ root, sizeBytes: 1024 ** 3, options: ['dmfs.metadata_backups=100'] });
    // Enough metadata that a copy takes a while: 3000 files.
    await pool.store.createLayer('img', { kind: 'image', building: true });
    const l = await pool.store.openLayer('img');
    for (let i = 0; i < 3000; i++) await l.mknod(l.rootIno, `f${i}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.close();
    await pool.store.sealLayer('img');
    await pool.close();
    const metadataDir = path.join(root, 'metadata');
    const before = listBackups(metadataDir).length;

    // A child that takes backups back to back, killed with SIGKILL at once several times.
    const script = `
      const { ThinPool } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/pool/thin-pool'))});
      (async () => {
        const p = await ThinPool.open(${JSON.stringify(root)});
        process.stdout.write('open\\n');
        for (;;) await p.backupMetadata({ force: true, reason: 'loop' });
      })();`;
    let sawTemporary = false;
    for (let round = 0; round < 4; round++) {
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 150 + round * 37));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      sawTemporary ||= fs.readdirSync(path.join(metadataDir, 'backups')).some((n) => n.startsWith('.tmp-'));
    }
    const all = listBackups(metadataDir);
    expect(all.length).toBeGreaterThan(before);
    // Every listed backup is a whole, readable copy with all 3000 files.
    for (const b of all) {
      const snap = MetadataSnapshot.open(b.dir);
      expect(snap.table('dirents').count([0], [Number.MAX_SAFE_INTEGER])).toBe(3000);
      await snap.close();
    }
    // Leftovers of a killed backup (always possible, seen when the kill landed mid-copy) go with the next backup.
    fs.mkdirSync(path.join(metadataDir, 'backups', '.tmp-999999-1-20260101T000000000Z'));
    fs.writeFileSync(path.join(metadataDir, 'backups', '.tmp-999999-1-20260101T000000000Z', 'data.mdb'), 'half');
    expect(listBackups(metadataDir).length).toBe(all.length);
    const again = await Pool.open(root);
    await again.thinPool.backupMetadata({ force: true, reason: 'manual' });
    await again.close();
    expect(fs.readdirSync(path.join(metadataDir, 'backups')).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    expect(sawTemporary).toBe(true); // at least one kill landed inside a backup
  });
});
