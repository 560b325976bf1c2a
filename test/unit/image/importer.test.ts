/**
 * Import, export and save through a LayerStore: the in-memory double and the real
 * pool (same tests). Layer semantics per the OCI spec, reuse, digests, atomicity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { importImage, LABELS } from '../../../src/image/importer';
import { exportLayer } from '../../../src/image/exporter';
import { saveImage } from '../../../src/image/oci-writer';
import { readTar } from '../../../src/image/tar-reader';
import { S_IFREG } from '../../../src/store/layer-store';
import {
  buildDockerArchive, buildOci, dir, file, hardlink, LayerSpec, opaque, readTree, storeFactories, symlink, T0,
  TestStore, whiteout, sha256,
} from './helpers/image-builder';
import { chunked, END, pad512, paxBlock, rawHeader, tmpdir, writeTar } from './helpers/tar-helpers';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
  return 'no error';
}

const BIG = Buffer.alloc(3 * 1024 * 1024 + 17);
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 7 + (i >> 12)) & 0xff;

/** Three layers: base tree; deletions, opaque dir, type changes, hardlink to lower, big file changed; more. */
function threeLayers(): LayerSpec[] {
  const bigChanged = Buffer.from(BIG);
  bigChanged.write('CHANGED', 2 * 1024 * 1024);
  return [
    {
      entries: [
        dir('./'),
        dir('etc'), file('etc/hostname', 'box\n', { mode: 0o640, uid: 1, gid: 2, xattrs: { 'user.a': Buffer.from('1') } }),
        file('etc/passwd', 'root:x:0:0\n'), symlink('etc/localtime', '/usr/share/zoneinfo/UTC'),
        dir('opq'), file('opq/lower1', 'l1'), dir('opq/sub'), file('opq/sub/lower2', 'l2'),
        dir('gone'), file('gone/a', 'a'), dir('gone/deep'), file('gone/deep/b', 'b'),
        file('becomes-dir', 'I was a file'), dir('becomes-file'), file('becomes-file/x', 'x'),
        file('bin/tool', 'ELF', { mode: 0o4755 }), file('big.bin', BIG),
        { e: { type: 'chardev', path: 'dev/null', mode: 0o666, uid: 0, gid: 0, mtimeNs: T0, devMajor: 1, devMinor: 3 } },
        { e: { type: 'fifo', path: 'run/fifo', mode: 0o600, uid: 0, gid: 0, mtimeNs: T0 } },
      ],
    },
    {
      compression: 'zstd',
      entries: [
        whiteout('etc/passwd'), opaque('opq'), file('opq/upper', 'u'), whiteout('gone'),
        whiteout('becomes-dir'), dir('becomes-dir', { mtimeNs: T0 + 5n }), file('becomes-dir/inside', 'now a dir'),
        file('becomes-file', 'now a file'), hardlink('bin/tool2', 'bin/tool'),
        file('big.bin', bigChanged), dir('etc', { mtimeNs: T0 + 123_456_789n }),
      ],
    },
    {
      compression: 'none',
      entries: [file('etc/motd', 'hello'), hardlink('etc/motd2', 'etc/motd'), file('opq/sub2', 's')],
    },
  ];
}

describe.each(storeFactories())('import into %s store', (_label, make) => {
  let t: TestStore;
  let work: string;
  beforeEach(async () => {
    t = await make();
    work = tmpdir('imp');
  });
  afterEach(async () => {
    await t.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  test('entries made a run at a time read back as the tar says: many runs, a name twice, links and whiteouts of queued names', async () => {
    const many = Array.from({ length: 700 }, (_, i) => file(`many/f${i}`, `content ${i}\n`.repeat(i % 50), { mtimeNs: T0 + BigInt(i) }));
    const oci = path.join(work, 'oci-runs');
    await buildOci(oci, [{
      entries: [
        dir('many'), ...many,
        file('dup', 'first'), symlink('s', 'dup'), file('dup', 'second wins', { mode: 0o600 }),
        file('linked', 'one inode'), hardlink('linked2', 'linked'),
        file('kept', 'own entry'), whiteout('kept'),
        file('big', BIG),
      ],
    }]);
    await importImage(t.store, oci, { name: 'runs' });
    const tree = await readTree(t.store, 'runs');
    for (let i = 0; i < 700; i += 99) {
      const body = Buffer.from(`content ${i}\n`.repeat(i % 50));
      expect(tree.get(`/many/f${i}`)).toMatchObject({ kind: 'file', content: body.length <= 256 ? body.toString() : sha256(body), mtimeNs: T0 + BigInt(i) });
    }
    expect([...tree.keys()].filter((k) => k.startsWith('/many/')).length).toBe(700);
    expect(tree.get('/dup')).toMatchObject({ kind: 'file', content: 'second wins', mode: 0o600 });
    expect(tree.get('/s')).toMatchObject({ kind: 'symlink', target: 'dup' });
    expect(tree.get('/linked2')!.ino).toBe(tree.get('/linked')!.ino);
    expect(tree.get('/linked')).toMatchObject({ nlink: 2, content: 'one inode' });
    expect(tree.get('/kept')).toMatchObject({ kind: 'file', content: 'own entry' });
    expect(tree.get('/big')).toMatchObject({ sizeBytes: BIG.length, content: sha256(BIG) });
  });

  test('multi-layer OCI layout: whiteouts, opaque dirs, type changes, hardlinks, xattrs, devices', async () => {
    const oci = path.join(work, 'oci');
    const built = await buildOci(oci, threeLayers(), { ref: 'v1' });
    const res = await importImage(t.store, `${oci}:v1`, { name: 'img:v1' });
    expect(res.format).toBe('oci-layout');
    expect(res.layers.map((l) => l.reused)).toEqual([false, false, false]);
    expect(res.name).toBe('img:v1');
    const top = await t.store.getLayer('img:v1');
    expect(top.kind).toBe('image');
    expect(top.state).toBe('committed');
    expect(top.labels[LABELS.diffId]).toBe(built.diffIds[2]);
    expect(JSON.parse(top.labels[LABELS.config]).config.Cmd).toEqual(['/bin/sh']);
    const mid = await t.store.getLayer(top.parent!);
    expect(mid.labels[LABELS.diffId]).toBe(built.diffIds[1]);
    expect(mid.name).toMatch(/^layer-[0-9a-f]{12}$/);

    const tree = await readTree(t.store, 'img:v1');
    expect([...tree.keys()].filter((p) => p.includes('.wh.'))).toEqual([]);
    expect(tree.get('/etc/hostname')).toMatchObject({ kind: 'file', mode: 0o640, uid: 1, gid: 2, content: 'box\n', mtimeNs: T0, xattrs: { 'user.a': '31' } });
    expect(tree.has('/etc/passwd')).toBe(false);
    expect(tree.get('/etc')!.mtimeNs).toBe(T0 + 123_456_789n);
    expect(tree.get('/etc/localtime')).toMatchObject({ kind: 'symlink', target: '/usr/share/zoneinfo/UTC' });
    expect([...tree.keys()].filter((p) => p.startsWith('/opq/')).sort()).toEqual(['/opq/sub2', '/opq/upper']);
    expect([...tree.keys()].filter((p) => p.startsWith('/gone'))).toEqual([]);
    expect(tree.get('/becomes-dir')!.kind).toBe('dir');
    expect(tree.get('/becomes-dir/inside')!.content).toBe('now a dir');
    expect(tree.get('/becomes-file')).toMatchObject({ kind: 'file', content: 'now a file' });
    expect(tree.has('/becomes-file/x')).toBe(false);
    expect(tree.get('/bin/tool2')!.ino).toBe(tree.get('/bin/tool')!.ino);
    expect(tree.get('/bin/tool')).toMatchObject({ mode: 0o4755, nlink: 2 });
    expect(tree.get('/etc/motd2')!.ino).toBe(tree.get('/etc/motd')!.ino);
    expect(tree.get('/dev/null')).toMatchObject({ kind: 'chardev', rdev: 0x103, mode: 0o666 });
    expect(tree.get('/run/fifo')).toMatchObject({ kind: 'fifo', mode: 0o600 });
    const changed = Buffer.from(BIG);
    changed.write('CHANGED', 2 * 1024 * 1024);
    expect(tree.get('/big.bin')!.content).toBe(sha256(changed));

    // The lower layer is untouched.
    const low = await readTree(t.store, (await t.store.getLayer(mid.parent!)).name);
    expect(low.get('/etc/passwd')!.content).toBe('root:x:0:0\n');
    expect(low.get('/big.bin')!.content).toBe(sha256(BIG));
    expect(low.get('/gone/deep/b')!.content).toBe('b');
  });

  test('reuse: the same image twice, and an image sharing lower layers', async () => {
    const oci = path.join(work, 'oci');
    const layers = threeLayers();
    await buildOci(oci, layers, { ref: 'a' });
    await buildOci(oci, [layers[0], layers[1], { entries: [file('other', 'x')] }], { ref: 'b' });
    await importImage(t.store, `${oci}:a`, { name: 'a' });
    const count = (await t.store.listLayers()).length;
    const again = await importImage(t.store, `${oci}:a`, { name: 'a' });
    expect(again.alreadyPresent).toBe(true);
    expect((await t.store.listLayers()).length).toBe(count);
    const b = await importImage(t.store, `${oci}:b`, { name: 'b' });
    expect(b.layers.map((l) => l.reused)).toEqual([true, true, false]);
    expect((await t.store.listLayers()).length).toBe(count + 1);
    expect((await t.store.getLayer('b')).parent).toBe((await t.store.getLayer('a')).parent);
    // A second name for the same chain is an empty tag layer on top of it.
    const c = await importImage(t.store, `${oci}:a`, { name: 'c' });
    expect(c.name).toBe('c');
    const cInfo = await t.store.getLayer('c');
    expect(cInfo.parent).toBe('a');
    expect(cInfo.labels[LABELS.tagOf]).toBe((await t.store.getLayer('a')).labels[LABELS.chainId]);
    expect([...(await readTree(t.store, 'c')).keys()]).toEqual([...(await readTree(t.store, 'a')).keys()]);
  });

  test('re-import under a name that points elsewhere moves the name', async () => {
    const oci = path.join(work, 'oci');
    await buildOci(oci, [{ entries: [file('v', '1')] }], { ref: 'one' });
    await buildOci(oci, [{ entries: [file('v', '2')] }], { ref: 'two' });
    await importImage(t.store, `${oci}:one`, { name: 'app' });
    await importImage(t.store, `${oci}:two`, { name: 'app' });
    expect((await readTree(t.store, 'app')).get('/v')!.content).toBe('2');
    const names = (await t.store.listLayers()).map((l) => l.name);
    expect(names.filter((n) => n.startsWith('layer-'))).toHaveLength(1); // the old image, unnamed now
  });

  test('docker save archive, OCI archive tar, @digest, single layer tars (plain/gzip/zstd), directory', async () => {
    const layers = threeLayers();
    const docker = path.join(work, 'docker.tar');
    await buildDockerArchive(docker, layers, 'example.com/app:1.0');
    const d = await importImage(t.store, docker);
    expect(d.format).toBe('docker-archive');
    expect(d.name).toBe('example.com/app:1.0');
    const dockerTree = await readTree(t.store, d.name);

    const oci = path.join(work, 'oci');
    const built = await buildOci(oci, layers, { ref: 'x' });
    const ociTar = path.join(work, 'oci.tar');
    await (async () => {
      const { execFileSync } = await import('node:child_process');
      execFileSync('tar', ['-C', oci, '-cf', ociTar, '.']);
    })();
    const o = await importImage(t.store, `${ociTar}@${built.manifestDigest}`, { name: 'from-oci-tar' });
    expect(o.format).toBe('oci-archive');
    expect(o.alreadyPresent).toBe(true); // the same chain the docker archive brought
    const ociTree = await readTree(t.store, 'from-oci-tar');
    expect([...ociTree.keys()].sort()).toEqual([...dockerTree.keys()].sort());

    const tar = await writeTar(layers[0].entries!);
    const { execFileSync } = await import('node:child_process');
    const zst = execFileSync('zstd', ['-q', '-c'], { input: tar });
    for (const [ext, data] of [['tar', tar], ['tar.gz', zlib.gzipSync(tar)], ['tar.zst', zst]] as const) {
      const f = path.join(work, `single.${ext}`);
      fs.writeFileSync(f, data);
      const r = await importImage(t.store, f, { name: `single-${ext.replace('.', '-')}` });
      expect(r.format).toBe('layer-tar');
      const tree = await readTree(t.store, r.name);
      expect(tree.get('/etc/passwd')!.content).toBe('root:x:0:0\n');
      expect((await t.store.getLayer(r.name)).labels[LABELS.diffId]).toBe(sha256(tar));
    }

    // An extracted `docker save` directory.
    const dockerDir = path.join(work, 'docker-dir');
    fs.mkdirSync(dockerDir);
    execFileSync('tar', ['-C', dockerDir, '-xf', docker]);
    const dd = await importImage(t.store, dockerDir, { name: 'from-docker-dir' });
    expect(dd.format).toBe('docker-dir');
    expect(dd.alreadyPresent).toBe(true);

    const rootfs = path.join(work, 'rootfs');
    fs.mkdirSync(path.join(rootfs, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(rootfs, 'etc/os-release'), 'ID=test\n');
    fs.linkSync(path.join(rootfs, 'etc/os-release'), path.join(rootfs, 'os-release'));
    fs.symlinkSync('etc/os-release', path.join(rootfs, 'link'));
    const r = await importImage(t.store, rootfs, { name: 'fromdir' });
    expect(r.format).toBe('directory');
    const tree = await readTree(t.store, 'fromdir');
    expect(tree.get('/etc/os-release')!.content).toBe('ID=test\n');
    expect(tree.get('/os-release')!.ino).toBe(tree.get('/etc/os-release')!.ino);
    expect(tree.get('/link')!.target).toBe('etc/os-release');
  });

  test('a file replaced with a few changed bytes keeps the unchanged blocks shared', async () => {
    const base = Buffer.alloc(8 * 1024 * 1024 + 100);
    for (let i = 0; i < base.length; i++) base[i] = (i * 13 + (i >> 16)) & 0xff;
    const touched = Buffer.from(base);
    touched.write('4 KiB change', 5 * 1024 * 1024 + 3);
    const shorter = base.subarray(0, 3 * 1024 * 1024 + 7);
    const longer = Buffer.concat([base, Buffer.alloc(200_000, 9)]);
    const oci = path.join(work, 'oci');
    await buildOci(oci, [
      { entries: [file('db', base, { mode: 0o600 }), file('short', base), file('long', base), file('linked', base), hardlink('linked2', 'linked')] },
      { entries: [file('db', touched, { mode: 0o640, uid: 7 }), file('short', shorter), file('long', longer), file('linked', touched)] },
    ]);
    const res = await importImage(t.store, oci, { name: 'rw' });
    const tree = await readTree(t.store, 'rw');
    expect(tree.get('/db')).toMatchObject({ content: sha256(touched), mode: 0o640, uid: 7, sizeBytes: touched.length });
    expect(tree.get('/short')).toMatchObject({ content: sha256(shorter), sizeBytes: shorter.length });
    expect(tree.get('/long')).toMatchObject({ content: sha256(longer), sizeBytes: longer.length });
    // A file with other names is replaced, not rewritten: the other name keeps the old content.
    expect(tree.get('/linked')!.content).toBe(sha256(touched));
    expect(tree.get('/linked2')!.content).toBe(sha256(base));
    expect(tree.get('/linked')!.ino).not.toBe(tree.get('/linked2')!.ino);
    const lower = await readTree(t.store, (await t.store.getLayer('rw')).parent!);
    expect(lower.get('/db')!.content).toBe(sha256(base));
    expect(res.layers[1].contentBytes).toBe(touched.length + shorter.length + longer.length + touched.length);
    if (t.label === 'pool') {
      // db: one block; short: a truncation; long: the grown tail; linked: a whole new file (8 MiB).
      const top = await t.store.getLayer('rw');
      expect(top.exclusiveBytes).toBeLessThan(touched.length + 2 * 1024 * 1024);
      expect(top.exclusiveBytes).toBeGreaterThanOrEqual(touched.length);
    }
  });

  describe('failures leave the pool as it was', () => {
    async function expectRejected(layers: LayerSpec[], code: string, opts: { tamper?: (blobs: string[]) => void } = {}): Promise<void> {
      const oci = path.join(work, `oci-${Math.random().toString(36).slice(2)}`);
      // A good first layer, so there is something to roll back.
      await buildOci(oci, [{ entries: [file('ok', 'fine'), dir('d')] }, ...layers], { tamper: opts.tamper });
      const before = await t.snapshot();
      expect(await codeOf(importImage(t.store, oci, { name: 'bad' }))).toBe(code);
      expect(await t.snapshot()).toBe(before);
    }

    test('path traversal', () => expectRejected([{ entries: [file('../../etc/evil', 'x')] }], 'UNSAFE_PATH'));
    test('traversal in the middle', () => expectRejected([{ entries: [file('d/../../x', 'x')] }], 'UNSAFE_PATH'));
    test('symlink planted in the same layer, then written through', () =>
      expectRejected([{ entries: [symlink('escape', '/etc'), file('escape/passwd', 'owned')] }], 'UNSAFE_PATH'));
    test('symlink planted in an earlier layer, then written through', () =>
      expectRejected([{ entries: [symlink('up', '../../../')] }, { entries: [file('up/x', 'x')] }], 'UNSAFE_PATH'));
    test('relative symlink to a parent, then written through', () =>
      expectRejected([{ entries: [symlink('d/loop', '..'), file('d/loop/d/loop/x', 'x')] }], 'UNSAFE_PATH'));
    test('hardlink to a path outside', () => expectRejected([{ entries: [hardlink('h', '../../etc/shadow')] }], 'UNSAFE_PATH'));
    test('hardlink through a symlink', () =>
      expectRejected([{ entries: [symlink('s', '/etc'), hardlink('h', 's/shadow')] }], 'UNSAFE_PATH'));
    test('hardlink to a missing file', () => expectRejected([{ entries: [hardlink('h', 'nope')] }], 'BAD_IMAGE'));
    test('hardlink to a directory', () => expectRejected([{ entries: [hardlink('h', 'd')] }], 'BAD_IMAGE'));
    test('name component over 255 bytes', () => expectRejected([{ entries: [file(`d/${'n'.repeat(256)}`, 'x')] }], 'NAME_TOO_LONG'));
    test('whiteout of ..', () => expectRejected([{ entries: [file('d/.wh...', '')] }], 'UNSAFE_PATH'));
    test('file under a file', () => expectRejected([{ entries: [file('ok/sub', 'x')] }], 'BAD_IMAGE'));
    test('file under a file of the same layer, still queued', () =>
      expectRejected([{ entries: [file('q1', 'a'), file('q2', 'b'), file('q2/sub', 'x')] }], 'BAD_IMAGE'));
    test('root entry that is not a directory', () => expectRejected([{ raw: Buffer.concat([rawHeader({ name: './', typeflag: '0' }), END]) }], 'BAD_IMAGE'));
    test('bad checksum', () => {
      const raw = Buffer.concat([rawHeader({ name: 'f', size: 1 }), pad512(Buffer.from('x')), END]);
      raw[0] ^= 1;
      return expectRejected([{ raw, compression: 'none' }], 'BAD_IMAGE');
    });
    test('truncated layer', async () => {
      const tar = await writeTar([file('f', Buffer.alloc(100_000, 1))]);
      return expectRejected([{ raw: tar.subarray(0, 50_000) }], 'BAD_IMAGE');
    });
    test('invalid UTF-8 name', () =>
      expectRejected([{ raw: Buffer.concat([rawHeader({ name: '', nameBytes: Buffer.from([0x66, 0xc3, 0x28]) }), END]) }], 'BAD_IMAGE'));
    test('absurd declared file size', () => {
      const size = Buffer.alloc(12);
      size[0] = 0x80;
      size.writeUIntBE(2 ** 44, 6, 6); // 16 TiB, in GNU base-256
      return expectRejected([{ raw: Buffer.concat([rawHeader({ name: 'huge', size }), Buffer.alloc(4096)]) }], 'FILE_TOO_BIG');
    });
    test('blob digest mismatch', () =>
      expectRejected([{ entries: [file('x', 'y')], compression: 'none' }], 'BAD_IMAGE', {
        tamper: (blobs) => {
          const b = fs.readFileSync(blobs[1]);
          b[0] ^= 1; // still a readable tar name, different bytes
          fs.writeFileSync(blobs[1], b);
        },
      }));
    test('diff id mismatch (blob matches its descriptor, content is not the config\'s)', async () => {
      const oci = path.join(work, 'oci-diff');
      await buildOci(oci, [{ entries: [file('ok', 'fine')] }]);
      const idx = JSON.parse(fs.readFileSync(path.join(oci, 'index.json'), 'utf8'));
      const mPath = path.join(oci, 'blobs/sha256', idx.manifests[0].digest.slice(7));
      const manifest = JSON.parse(fs.readFileSync(mPath, 'utf8'));
      const cPath = path.join(oci, 'blobs/sha256', manifest.config.digest.slice(7));
      const config = JSON.parse(fs.readFileSync(cPath, 'utf8'));
      config.rootfs.diff_ids[0] = sha256('something else');
      const cBuf = Buffer.from(JSON.stringify(config));
      fs.writeFileSync(path.join(oci, 'blobs/sha256', sha256(cBuf).slice(7)), cBuf);
      manifest.config = { ...manifest.config, digest: sha256(cBuf), size: cBuf.length };
      const mBuf = Buffer.from(JSON.stringify(manifest));
      fs.writeFileSync(path.join(oci, 'blobs/sha256', sha256(mBuf).slice(7)), mBuf);
      idx.manifests[0] = { ...idx.manifests[0], digest: sha256(mBuf), size: mBuf.length };
      fs.writeFileSync(path.join(oci, 'index.json'), JSON.stringify(idx));
      const before = await t.snapshot();
      expect(await codeOf(importImage(t.store, oci, { name: 'bad' }))).toBe('BAD_IMAGE');
      expect(await t.snapshot()).toBe(before);
    });
    test('manifest digest mismatch is found before anything is written', async () => {
      const oci = path.join(work, 'oci-m');
      const built = await buildOci(oci, [{ entries: [file('ok', 'fine')] }]);
      const mPath = path.join(oci, 'blobs/sha256', built.manifestDigest.slice(7));
      fs.writeFileSync(mPath, fs.readFileSync(mPath, 'utf8').replace('"schemaVersion":2', '"schemaVersion": 2'));
      const before = await t.snapshot();
      expect(await codeOf(importImage(t.store, oci, { name: 'bad' }))).toBe('BAD_IMAGE');
      expect(await t.snapshot()).toBe(before);
    });
    test('digest with a path in it', async () => {
      const oci = path.join(work, 'oci-p');
      await buildOci(oci, [{ entries: [file('ok', 'fine')] }]);
      const idx = JSON.parse(fs.readFileSync(path.join(oci, 'index.json'), 'utf8'));
      idx.manifests[0].digest = 'sha256:../../../../etc/passwd';
      fs.writeFileSync(path.join(oci, 'index.json'), JSON.stringify(idx));
      expect(await codeOf(importImage(t.store, oci, { name: 'bad' }))).toBe('BAD_IMAGE');
    });
    test('gzip bomb layer', async () => {
      // A tar of one 64 MiB zero file, gzipped to ~64 KiB; the cap is 16 MiB.
      const tar = await writeTar([file('zeros', Buffer.alloc(64 << 20))]);
      const oci = path.join(work, 'oci-bomb');
      await buildOci(oci, [{ raw: tar, compression: 'gzip' }]);
      const before = await t.snapshot();
      expect(await codeOf(importImage(t.store, oci, { name: 'bomb', maxLayerTarBytes: 16 << 20 }))).toBe('BAD_IMAGE');
      expect(await t.snapshot()).toBe(before);
    });
  });

  test('spec-conformant handling: absolute names, root spelled ./ and /, duplicates, whiteout order, reserved .wh..wh.', async () => {
    const oci = path.join(work, 'oci');
    await buildOci(oci, [
      { entries: [dir('keep'), file('keep/a', 'A'), dir('w'), file('w/lower', 'L'), file('dup', 'first')] },
      {
        raw: Buffer.concat([
          await writeTar([
            dir('/', { mode: 0o711, mtimeNs: T0 + 1n }),
            file('/abs/file', 'absolute lands inside'),
            file('dup', 'second'),
            file('dup', 'third'),
            file('w/mine', 'M'), // written before the whiteout of its directory: it stays
            whiteout('w'),
            file('keep/.wh..wh.plnk', 'aufs metadata'),
            whiteout('never-existed'),
          ], false),
          END,
        ]),
      },
    ]);
    await importImage(t.store, oci, { name: 'spec' });
    const tree = await readTree(t.store, 'spec');
    expect(tree.get('/abs/file')!.content).toBe('absolute lands inside');
    expect(tree.get('/dup')!.content).toBe('third');
    expect([...tree.keys()].filter((p) => p.startsWith('/w/'))).toEqual(['/w/mine']);
    expect(tree.has('/keep/.wh..wh.plnk')).toBe(false);
    expect(tree.get('/keep/a')!.content).toBe('A');
    const fsys = await t.store.openLayer('spec', { readOnly: true });
    expect((await fsys.getattr(fsys.rootIno)).mode & 0o7777).toBe(0o711);
    await fsys.close();
  });

  test('pax records from another writer: long names, xattrs, ns times through the importer', async () => {
    const longPath = `${'a'.repeat(200)}/${'b'.repeat(250)}`;
    const raw = Buffer.concat([
      paxBlock('pax', { path: longPath, mtime: '1650000000.5', 'SCHILY.xattr.security.capability': Buffer.from([1, 0, 0, 2]) }),
      rawHeader({ name: 'ignored', size: 3 }), pad512(Buffer.from('cap')), END,
    ]);
    const oci = path.join(work, 'oci');
    await buildOci(oci, [{ raw }]);
    await importImage(t.store, oci, { name: 'pax' });
    const tree = await readTree(t.store, 'pax');
    expect(tree.get(`/${longPath}`)).toMatchObject({ content: 'cap', mtimeNs: 1_650_000_000_500_000_000n, xattrs: { 'security.capability': '01000002' } });
  });

  test('export of changes is an OCI layer that rebuilds the same tree; --full flattens', async () => {
    const oci = path.join(work, 'oci');
    await buildOci(oci, threeLayers());
    await importImage(t.store, oci, { name: 'src' });
    const srcTop = await t.store.getLayer('src');
    const chunks: Buffer[] = [];
    await exportLayer(t.store, srcTop.parent!, (c) => {
      chunks.push(Buffer.from(c));
    });
    const tar = Buffer.concat(chunks);
    const names: string[] = [];
    for await (const { entry } of readTar(chunked(tar))) names.push(entry.path);
    expect(names).toContain('etc/.wh.passwd');
    expect(names).toContain('.wh.gone');
    expect(names).toContain('opq/.wh..wh..opq');
    expect(names.indexOf('opq/.wh..wh..opq')).toBeGreaterThan(names.indexOf('opq/'));
    expect(names.indexOf('opq/.wh..wh..opq')).toBeLessThan(names.indexOf('opq/upper'));
    expect(names.filter((n) => n.startsWith('etc/') && !n.includes('.wh.'))).not.toContain('etc/hostname');

    // Deterministic.
    const again: Buffer[] = [];
    await exportLayer(t.store, srcTop.parent!, (c) => {
      again.push(Buffer.from(c));
    });
    expect(Buffer.concat(again).equals(tar)).toBe(true);

    // Save the whole image, import the saved layout under a new name: same tree.
    const saved = path.join(work, 'saved');
    const res = await saveImage(t.store, 'src', saved, { ref: 'copy' });
    expect(res.layers).toHaveLength(3);
    const back = await importImage(t.store, `${saved}:copy`, { name: 'copy' });
    expect(back.layers.every((l) => !l.reused)).toBe(true);
    const a = await readTree(t.store, 'src');
    const b = await readTree(t.store, 'copy');
    const strip = (m: Map<string, { ino: number }>): unknown => [...m].map(([k, v]) => [k, { ...v, ino: 0 }]).sort();
    expect(strip(b)).toEqual(strip(a));

    // --full of the top equals the merged tree.
    const full: Buffer[] = [];
    await exportLayer(t.store, 'src', (c) => {
      full.push(Buffer.from(c));
    }, { full: true });
    const fullTar = path.join(work, 'full.tar');
    fs.writeFileSync(fullTar, Buffer.concat(full));
    await importImage(t.store, fullTar, { name: 'flat' });
    expect(strip(await readTree(t.store, 'flat'))).toEqual(strip(a));
  });

  test('container → changes → commit → export equals the container changes', async () => {
    const oci = path.join(work, 'oci');
    await buildOci(oci, threeLayers());
    await importImage(t.store, oci, { name: 'base-img' });
    await t.store.createLayer('ctr', { parent: 'base-img', kind: 'container' });
    const fsys = await t.store.openLayer('ctr');
    const etc = await fsys.resolve('/etc');
    await fsys.unlink(etc.ino, 'hostname');
    const f = await fsys.mknod(etc.ino, 'new', { mode: S_IFREG | 0o600, uid: 5, gid: 5 });
    await fsys.write(f.ino, Buffer.from('fresh'), 0);
    const big = await fsys.resolve('/big.bin');
    await fsys.write(big.ino, Buffer.from('XYZ'), 100);
    await fsys.close();
    await t.store.commit('ctr', 'committed');
    const chunks: Buffer[] = [];
    await exportLayer(t.store, 'committed', (c) => {
      chunks.push(Buffer.from(c));
    });
    const names: string[] = [];
    for await (const { entry } of readTar(chunked(Buffer.concat(chunks)))) names.push(entry.path);
    expect(names).toEqual(expect.arrayContaining(['etc/.wh.hostname', 'etc/new', 'big.bin']));
    expect(names).not.toContain('etc/passwd');
    const saved = path.join(work, 'saved.tar');
    await saveImage(t.store, 'committed', saved);
    await importImage(t.store, saved, { name: 'reimported' });
    const strip = (m: Map<string, { ino: number }>): unknown => [...m].map(([k, v]) => [k, { ...v, ino: 0 }]).sort();
    expect(strip(await readTree(t.store, 'reimported'))).toEqual(strip(await readTree(t.store, 'committed')));
  });
});
