/**
 * Images built by real tools, imported into a real pool, compared with what the same
 * tools unpack: umoci builds a multi-layer OCI image from a generated rootfs (deletions,
 * an opaque directory, hard links, xattrs, devices, type changes, a large file modified
 * in an upper layer); `umoci unpack` of it is the reference; our import is read back
 * through LayerFs (no FUSE needed). skopeo converts it to an OCI archive, a docker
 * archive and zstd layers, which must import to the same tree. Round trip: import →
 * container → changes → commit → `dmfs save` → `umoci unpack` (and skopeo accepts it).
 *
 * Needs umoci and skopeo (Debian packages); under CI=true their absence fails the test.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { importImage } from '../../src/image/importer';
import { saveImage } from '../../src/image/oci-writer';
import { S_IFREG } from '../../src/store/layer-store';
import { writeTar } from '../unit/image/helpers/tar-helpers';
import { readTree, TreeNode } from '../unit/image/helpers/image-builder';

function haveTool(name: string): boolean {
  try {
    execFileSync(name, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const TOOLS = haveTool('umoci') && haveTool('skopeo') && haveTool('getfattr') && haveTool('setfattr');
if (!TOOLS && process.env.CI !== 'true') {
  // eslint-disable-next-line no-console
  console.warn('image-umoci: umoci/skopeo/attr not installed (apt-get install umoci skopeo attr); skipping');
}
const maybe = TOOLS || process.env.CI === 'true' ? describe : describe.skip;

function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): string {
  return execFileSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
}

function sh(script: string, cwd: string): void {
  execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

const BIG_BYTES = 24 * 1024 * 1024;

/** Layer 1: a rootfs-like tree. */
function populateBase(rootfs: string): void {
  const w = (p: string, data: string | Buffer, mode = 0o644): void => {
    fs.mkdirSync(path.dirname(path.join(rootfs, p)), { recursive: true });
    fs.writeFileSync(path.join(rootfs, p), data);
    fs.chmodSync(path.join(rootfs, p), mode);
  };
  w('etc/hostname', 'box\n');
  w('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n');
  w('etc/group', 'root:x:0:\nuser:x:1000:\n');
  w('etc/os-release', 'ID=dmfs-test\n');
  w('usr/bin/tool', '#!/bin/sh\necho tool\n', 0o755);
  w('usr/bin/suid', 'suid', 0o4755);
  w('usr/bin/a', 'shared inode\n', 0o755);
  fs.linkSync(path.join(rootfs, 'usr/bin/a'), path.join(rootfs, 'usr/bin/b'));
  w('usr/lib/libx.so.1', Buffer.alloc(70_000, 0x5a));
  fs.symlinkSync('libx.so.1', path.join(rootfs, 'usr/lib/libx.so'));
  fs.symlinkSync('/usr/share/zoneinfo/UTC', path.join(rootfs, 'etc/localtime'));
  for (let p = 0; p < 40; p++) {
    for (let f = 0; f < 8; f++) w(`usr/share/doc/pkg${p}/file${f}`, `package ${p} file ${f}\n`.repeat(f * 10 + 1));
  }
  w('home/user/.profile', 'export PS1=$\n');
  sh('chown -R 1000:1000 home/user', rootfs);
  fs.mkdirSync(path.join(rootfs, 'tmp'));
  fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
  fs.mkdirSync(path.join(rootfs, 'dev'));
  sh('mknod dev/null c 1 3 && chmod 666 dev/null && mknod dev/sda b 8 0 && mkfifo run-fifo', rootfs);
  const big = Buffer.alloc(BIG_BYTES);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  w('var/lib/db.img', big);
  w('opq/lower-a', 'a');
  w('opq/sub/lower-b', 'b');
  w('gone/deep/tree/file', 'gone');
  w('typechange-dir/inner', 'will become a file');
  w('typechange-file', 'will become a dir');
  sh('setfattr -n user.origin -v layer1 usr/bin/tool && setfattr -n user.bin -v 0x00ff10 etc/hostname', rootfs);
  sh("find . -exec touch -h -d '@1650000000.25' {} +", rootfs);
}

/** Layer 2: deletions, a 4 KiB change in the big file, ownership/mode changes, type changes, xattrs. */
function modifyUpper(rootfs: string): void {
  sh([
    'rm etc/hostname',
    'rm -rf gone',
    'dd if=/dev/urandom of=var/lib/db.img bs=4096 count=1 seek=2048 conv=notrunc status=none',
    'chmod 600 etc/passwd',
    'chown 1000:1000 usr/bin/tool',
    'ln usr/bin/a usr/bin/c',
    'rm -rf typechange-dir && echo now-a-file > typechange-dir',
    'rm typechange-file && mkdir typechange-file && echo inside > typechange-file/x',
    'setfattr -n user.added -v upper etc/group',
    'mkdir -p srv/www && echo "<h1>hi</h1>" > srv/www/index.html',
    "touch -d '@1700000000.5' srv/www/index.html",
  ].join(' && '), rootfs);
}

interface RealNode extends Omit<TreeNode, 'ino'> {
  ino: bigint;
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** The reference tree: lstat, readlink, contents, xattrs (getfattr), from a real directory. */
function walkReal(root: string): Map<string, RealNode> {
  const xattrs = new Map<string, Record<string, string>>();
  const dump = run('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]);
  let cur: string | null = null;
  for (const line of dump.split('\n')) {
    if (line.startsWith('# file: ')) cur = line.slice(8).slice(root.length) || '/';
    else if (cur && line.includes('=')) {
      const [k, v] = [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)];
      if (!xattrs.has(cur)) xattrs.set(cur, {});
      xattrs.get(cur)![k] = v.startsWith('0x') ? v.slice(2) : Buffer.from(v.replace(/^"|"$/g, '')).toString('hex');
    }
  }
  const out = new Map<string, RealNode>();
  const visit = (dir: string, rel: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const abs = path.join(dir, name);
      const p = `${rel}/${name}`;
      const st = fs.lstatSync(abs, { bigint: true });
      const kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file'
        : st.isCharacterDevice() ? 'chardev' : st.isBlockDevice() ? 'blockdev' : st.isFIFO() ? 'fifo' : 'socket';
      const node: RealNode = {
        kind, mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid),
        sizeBytes: kind === 'dir' ? 0 : Number(st.size), mtimeNs: st.mtimeNs, rdev: Number(st.rdev),
        nlink: Number(st.nlink), ino: st.ino, xattrs: xattrs.get(p) ?? {},
      };
      if (kind === 'symlink') node.target = fs.readlinkSync(abs);
      if (kind === 'file') {
        const data = fs.readFileSync(abs);
        node.content = data.length <= 256 ? data.toString('utf8') : sha256(data);
      }
      out.set(p, node);
      if (kind === 'dir') visit(abs, p);
    }
  };
  visit(root, '');
  return out;
}

function linkGroups(tree: Map<string, { kind: string; nlink: number; ino: number | bigint }>): string[][] {
  const by = new Map<string, string[]>();
  for (const [p, n] of tree) {
    if (n.kind === 'dir' || n.nlink < 2) continue;
    const k = String(n.ino);
    if (!by.has(k)) by.set(k, []);
    by.get(k)!.push(p);
  }
  return [...by.values()].map((g) => g.sort()).sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

/** Field-by-field comparison; returns the differences (empty when equal). */
function compareTrees(ours: Map<string, TreeNode>, ref: Map<string, RealNode>): string[] {
  const diffs: string[] = [];
  for (const p of ref.keys()) if (!ours.has(p)) diffs.push(`missing ${p}`);
  for (const p of ours.keys()) if (!ref.has(p)) diffs.push(`extra ${p}`);
  for (const [p, r] of ref) {
    const o = ours.get(p);
    if (!o) continue;
    const fields: (keyof TreeNode & keyof RealNode)[] = ['kind', 'mode', 'uid', 'gid', 'sizeBytes', 'mtimeNs', 'target', 'content'];
    for (const f of fields) if (o[f] !== r[f]) diffs.push(`${p}: ${f} ${String(o[f])} != ${String(r[f])}`);
    if (r.kind === 'chardev' || r.kind === 'blockdev') if (o.rdev !== r.rdev) diffs.push(`${p}: rdev ${o.rdev} != ${r.rdev}`);
    if (r.kind !== 'dir' && o.nlink !== r.nlink) diffs.push(`${p}: nlink ${o.nlink} != ${r.nlink}`);
    const ox = JSON.stringify(Object.entries(o.xattrs).sort());
    const rx = JSON.stringify(Object.entries(r.xattrs).sort());
    if (ox !== rx) diffs.push(`${p}: xattrs ${ox} != ${rx}`);
  }
  const og = JSON.stringify(linkGroups(ours));
  const rg = JSON.stringify(linkGroups(ref));
  if (og !== rg) diffs.push(`hardlink groups ${og} != ${rg}`);
  return diffs;
}

maybe('images from umoci and skopeo', () => {
  let work: string;
  let pool: Pool;
  let layout: string;

  beforeAll(async () => {
    if (!TOOLS) throw new Error('CI=true but umoci, skopeo or getfattr/setfattr is missing: install umoci skopeo attr');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-umoci-'));
    layout = path.join(work, 'layout');
    run('umoci', ['init', '--layout', layout]);
    run('umoci', ['new', '--image', `${layout}:t`]);
    // Layer 1.
    run('umoci', ['unpack', '--image', `${layout}:t`, path.join(work, 'b1')]);
    populateBase(path.join(work, 'b1', 'rootfs'));
    run('umoci', ['repack', '--image', `${layout}:t`, path.join(work, 'b1')]);
    // Layer 2, from a fresh unpack (umoci diffs against the unpacked manifest).
    run('umoci', ['unpack', '--image', `${layout}:t`, path.join(work, 'b2')]);
    modifyUpper(path.join(work, 'b2', 'rootfs'));
    run('umoci', ['repack', '--image', `${layout}:t`, path.join(work, 'b2')]);
    // Layer 3: an opaque directory (umoci itself writes per-name whiteouts only).
    const T = 1_710_000_000_000_000_000n;
    const tar = await writeTar([
      { e: { type: 'dir', path: 'opq', mode: 0o750, uid: 0, gid: 0, mtimeNs: T } },
      { e: { type: 'file', path: 'opq/.wh..wh..opq', mode: 0o644, uid: 0, gid: 0, mtimeNs: T, sizeBytes: 0 } },
      { e: { type: 'file', path: 'opq/fresh', mode: 0o644, uid: 0, gid: 0, mtimeNs: T, sizeBytes: 5 }, body: Buffer.from('fresh') },
    ]);
    fs.writeFileSync(path.join(work, 'layer3.tar'), tar);
    run('umoci', ['raw', 'add-layer', '--image', `${layout}:t`, path.join(work, 'layer3.tar')]);
    run('umoci', ['unpack', '--image', `${layout}:t`, path.join(work, 'ref')]);
    pool = await Pool.create({ root: path.join(work, 'pool'), sizeBytes: 8 * 1024 ** 3 });
  }, 300_000);

  afterAll(async () => {
    await pool?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('umoci image imports to exactly what umoci unpacks', async () => {
    const res = await importImage(pool.store, `${layout}:t`, { name: 'umoci-img:t' });
    expect(res.layers).toHaveLength(3);
    const ours = await readTree(pool.store, 'umoci-img:t');
    const ref = walkReal(path.join(work, 'ref', 'rootfs'));
    expect(ref.size).toBeGreaterThan(350);
    expect(compareTrees(ours, ref)).toEqual([]);
    // The cases are really there.
    expect(ref.has('/etc/hostname')).toBe(false);
    expect(ref.has('/gone')).toBe(false);
    expect([...ref.keys()].filter((p) => p.startsWith('/opq/'))).toEqual(['/opq/fresh']);
    expect(ref.get('/typechange-dir')!.kind).toBe('file');
    expect(ref.get('/typechange-file')!.kind).toBe('dir');
    expect(ref.get('/usr/bin/tool')!.xattrs['user.origin']).toBe(Buffer.from('layer1').toString('hex'));
  }, 300_000);

  test('a 4 KiB change to a large file costs the upper layer about one block, not the file', async () => {
    const layers = await pool.store.listLayers();
    const top = layers.find((l) => l.name === 'umoci-img:t')!;
    const mid = layers.find((l) => l.name === top.parent)!;
    // umoci's layer 2 holds the whole 24 MiB file again; the pool shares every unchanged block.
    expect(mid.exclusiveBytes).toBeLessThan(2 * 1024 * 1024);
  });

  test('skopeo conversions (oci-archive, docker-archive, zstd layers) import to the same tree', async () => {
    const ref = walkReal(path.join(work, 'ref', 'rootfs'));
    const ociArchive = path.join(work, 'img-oci.tar');
    run('skopeo', ['copy', '-q', `oci:${layout}:t`, `oci-archive:${ociArchive}:t`]);
    const a = await importImage(pool.store, ociArchive, { name: 'from-oci-archive' });
    expect(a.alreadyPresent).toBe(true); // same diff ids, same chain
    expect(compareTrees(await readTree(pool.store, 'from-oci-archive'), ref)).toEqual([]);

    const dockerArchive = path.join(work, 'img-docker.tar');
    run('skopeo', ['copy', '-q', `oci:${layout}:t`, `docker-archive:${dockerArchive}:example/app:1`]);
    const d = await importImage(pool.store, dockerArchive);
    expect(d.name).toMatch(/^(docker\.io\/)?example\/app:1$/); // skopeo writes the normalised name
    expect(compareTrees(await readTree(pool.store, d.name), ref)).toEqual([]);

    const zstdLayout = path.join(work, 'zstd');
    run('skopeo', ['copy', '-q', '--dest-compress-format', 'zstd', `oci:${layout}:t`, `oci:${zstdLayout}:z`]);
    const manifest = JSON.parse(run('skopeo', ['inspect', '--raw', `oci:${zstdLayout}:z`]));
    expect(manifest.layers.every((l: { mediaType: string }) => l.mediaType.endsWith('+zstd'))).toBe(true);
    // Reuse would hide the zstd path: import into a fresh pool.
    const p2 = await Pool.create({ root: path.join(work, 'pool-zstd'), sizeBytes: 4 * 1024 ** 3 });
    try {
      const z = await importImage(p2.store, `${zstdLayout}:z`, { name: 'zstd-img' });
      expect(z.layers.every((l) => !l.reused)).toBe(true);
      expect(compareTrees(await readTree(p2.store, 'zstd-img'), ref)).toEqual([]);
    } finally {
      await p2.close();
    }
  }, 300_000);

  test('round trip: container changes → commit → dmfs save → umoci unpack and skopeo', async () => {
    await pool.store.createLayer('rt-ctr', { parent: 'umoci-img:t', kind: 'container' });
    const f = await pool.store.openLayer('rt-ctr');
    const db = await f.resolve('/var/lib/db.img');
    await f.write(db.ino, Buffer.alloc(4096, 0xee), 12 * 1024 * 1024);
    const bin = await f.resolve('/usr/bin');
    await f.unlink(bin.ino, 'b');
    const srv = await f.resolve('/srv');
    const d = await f.mkdir(srv.ino, 'api', { mode: 0o750, uid: 33, gid: 33 });
    const n = await f.mknod(d.ino, 'main.py', { mode: S_IFREG | 0o640, uid: 33, gid: 33 });
    await f.write(n.ino, Buffer.from('print("hi")\n'), 0);
    await f.setxattr(n.ino, 'user.rt', Buffer.from('yes'));
    await f.symlink(d.ino, 'current', 'main.py', { uid: 33, gid: 33 });
    const etc = await f.resolve('/etc');
    await f.rename(etc.ino, 'os-release', etc.ino, 'os-release.old');
    const passwd = await f.resolve('/etc/passwd');
    await f.setattr(passwd.ino, { mode: 0o644 });
    // A directory of a lower layer removed with its content: whiteouts in the new layer.
    const tf = await f.resolve('/typechange-file');
    await f.unlink(tf.ino, 'x');
    await f.rmdir(f.rootIno, 'typechange-file');
    await f.fsync();
    await f.close();
    await pool.store.commit('rt-ctr', 'rt-img');

    const saved = path.join(work, 'saved');
    const res = await saveImage(pool.store, 'rt-img', saved, { ref: 'rt' });
    expect(res.layers).toHaveLength(4);
    run('umoci', ['unpack', '--image', `${saved}:rt`, path.join(work, 'rt-bundle')]);
    const ours = await readTree(pool.store, 'rt-img');
    const ref = walkReal(path.join(work, 'rt-bundle', 'rootfs'));
    expect(ref.has('/usr/bin/b')).toBe(false);
    expect(ref.get('/srv/api/current')!.target).toBe('main.py');
    expect(ref.has('/typechange-file')).toBe(false);
    expect(compareTrees(ours, ref)).toEqual([]);

    // skopeo reads it, and copying it verifies every blob digest.
    const inspect = JSON.parse(run('skopeo', ['inspect', `oci:${saved}:rt`]));
    expect(inspect.Layers).toHaveLength(4);
    run('skopeo', ['copy', '-q', `oci:${saved}:rt`, `oci-archive:${path.join(work, 'rt.tar')}:rt`]);
    const savedTar = path.join(work, 'saved.tar');
    await saveImage(pool.store, 'rt-img', savedTar, { ref: 'rt' });
    run('skopeo', ['copy', '-q', `oci-archive:${savedTar}:rt`, `oci:${path.join(work, 'from-tar')}:rt`]);
  }, 300_000);
});
