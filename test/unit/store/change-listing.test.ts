/**
 * The change listing (`ChainLayerFs.changes()`): what a container layer changed, in tree
 * order (parents before children, siblings by name), with each change's directory as a
 * chain of names matching its path. Covers the cases the walk must find from the
 * segment's own records: lower entries renamed (a moved directory brings its lower
 * subtree as added), changed in place, removed, made opaque; and a change far below
 * unchanged directories.
 */
import { tempPool } from '../../support/temp-pool';
import { S_IFREG, type ChangeDir, type LayerChange, type LayerFs } from '../../../src/store/layer-store';

const opts = { uid: 0, gid: 0 };

async function mkfile(fs: LayerFs, dir: number, name: string, text: string): Promise<number> {
  const f = await fs.mknod(dir, name, { mode: S_IFREG | 0o644, ...opts });
  await fs.write(f.ino, Buffer.from(text), 0);
  return f.ino;
}

function pathOf(at: { dir: ChangeDir; name: string }): string {
  const names: string[] = [at.name];
  for (let d: ChangeDir | null = at.dir; d !== null && d.parent !== null; d = d.parent) names.push(d.name);
  return '/' + names.reverse().join('/');
}

test('changes of a container layer: renames, in-place changes, removals, opaque, deep', async () => {
  const { pool, remove } = await tempPool();
  try {
    const s = pool.store;
    await s.createLayer('img', { kind: 'image', building: true });
    let fs = await s.openLayer('img');
    const a = await fs.mkdir(fs.rootIno, 'a', { mode: 0o755, ...opts });
    await mkfile(fs, a.ino, 'x', 'x');
    const sub = await fs.mkdir(a.ino, 'sub', { mode: 0o755, ...opts });
    await mkfile(fs, sub.ino, 'y', 'y');
    const keep = await fs.mkdir(fs.rootIno, 'keep', { mode: 0o755, ...opts });
    await mkfile(fs, keep.ino, 'chmod-me', 'c');
    await mkfile(fs, keep.ino, 'gone', 'g');
    await mkfile(fs, keep.ino, 'same', 's');
    const op = await fs.mkdir(fs.rootIno, 'op', { mode: 0o755, ...opts });
    await mkfile(fs, op.ino, 'hidden', 'h');
    let deep = await fs.mkdir(fs.rootIno, 'deep', { mode: 0o755, ...opts });
    for (let i = 0; i < 50; i++) deep = await fs.mkdir(deep.ino, 'n', { mode: 0o755, ...opts });
    await mkfile(fs, deep.ino, 'leaf', 'l');
    await fs.close();
    await s.sealLayer('img');

    await s.createLayer('c', { parent: 'img', kind: 'container' });
    fs = await s.openLayer('c');
    await fs.rename(fs.rootIno, 'a', fs.rootIno, 'b');
    const k = (await fs.lookup(fs.rootIno, 'keep'))!;
    await fs.setattr((await fs.lookup(k.ino, 'chmod-me'))!.ino, { mode: 0o600 });
    await fs.unlink(k.ino, 'gone');
    await mkfile(fs, k.ino, 'new', 'n');
    await fs.setOpaque((await fs.lookup(fs.rootIno, 'op'))!.ino);
    const leaf = await fs.resolve(`/deep${'/n'.repeat(50)}/leaf`);
    await fs.write(leaf.ino, Buffer.from('L'), 0);

    const got: LayerChange[] = [];
    for await (const c of fs.changes()) got.push(c);
    await fs.close();
    const lines = got.map((c) => `${c.change} ${c.path}`);
    expect(lines).toEqual([
      'deleted /a',
      'added /b',
      'added /b/sub',
      'added /b/sub/y',
      'added /b/x',
      // Only the leaf's own change below unchanged directories, which are entered, not listed.
      `modified /deep${'/n'.repeat(50)}/leaf`,
      'modified /keep',
      'modified /keep/chmod-me',
      'deleted /keep/gone',
      'added /keep/new',
      'opaque /op',
      'modified /op',
    ]);
    for (const c of got) {
      if (c.path !== '/') expect(c.at && pathOf(c.at)).toBe(c.path);
    }
  } finally {
    await remove();
  }
});
