/**
 * Metadata backups around a real mount: `dmfs umount` of a written container layer leaves
 * a backup holding what was written; a read-only mount changes nothing and takes none;
 * `check --repair --from-backup` refuses while the layer is mounted. Real CLI processes,
 * real FUSE mount, ordinary tools (cp, sha256sum).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');

describeFuse('metadata backups at unmount', () => {
  let root: string;
  let work: string;
  const dmfs = (args: string) => sh(`node ${CLI} ${args} --root ${shq(root)}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const backups = async () => JSON.parse(await dmfsOk('check --backups --json')) as { name: string; reasons: string[]; dir: string }[];

  beforeAll(async () => {
    await run(`node ${path.join(REPO, 'scripts', 'setup.js')} --quiet`, { timeoutMs: 600_000 });
    root = tempDir('backup-pool');
    work = tempDir('backup-work');
    await dmfsOk('pool create --size 2G');
    await dmfsOk('create ctr');
  }, 600_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('umount of a written layer takes a backup; the pool restored from it has the file; a mounted pool refuses the restore', async () => {
    const before = (await backups()).length;
    const mp = path.join(work, 'rw');
    await dmfsOk(`mount ctr ${mp}`);
    await run(`head -c 3000000 /dev/urandom > ${work}/blob && cp ${work}/blob ${mp}/blob && sync`);
    const sum = (await run(`sha256sum < ${work}/blob`)).split(' ')[0];

    // While mounted: the restore refuses and leaves the pool alone.
    const refused = await dmfs('check --repair --from-backup --json');
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout).error.code).toBe('POOL_LOCKED');
    expect(fs.readdirSync(path.join(root, 'metadata')).filter((n) => n.startsWith('damaged-'))).toEqual([]);

    await dmfsOk(`umount ${mp}`);
    const after = await backups();
    expect(after.length).toBe(before + 1);
    expect(after[0].reasons).toContain('unmount');

    // Read-only mount and unmount: nothing changed, no backup.
    const ro = path.join(work, 'ro');
    await dmfsOk(`mount ctr ${ro} --ro`);
    expect((await run(`sha256sum < ${ro}/blob`)).split(' ')[0]).toBe(sum);
    await dmfsOk(`umount ${ro}`);
    expect((await backups()).length).toBe(after.length);

    // Roll back to that backup (the live metadata is fine, so nothing is lost) and read the file again.
    const restore = JSON.parse(await dmfsOk('check --repair --from-backup --json'));
    expect(restore.backup.name).toBe(after[0].name);
    expect(restore.lost).toMatchObject({ layersCreated: [], filesTotal: 0, lostBlocks: 0 });
    await dmfsOk(`mount ctr ${ro} --ro`);
    expect((await run(`sha256sum < ${ro}/blob`)).split(' ')[0]).toBe(sum);
    await dmfsOk(`umount ${ro}`);
    expect((await dmfs('check --data')).code).toBe(0);
  }, 120_000);
});
