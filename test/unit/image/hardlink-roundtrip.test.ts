/**
 * Issue 11, case 11: `dmfs save` → `dmfs import` → `dmfs save` is a fixed point for
 * images with hard links across layers: a lower file with several names whose link
 * count an upper layer changes (a name added as a link to the lower file, a name
 * removed) saves to the same layer diff ids and `dmfs diff` output from the image as
 * first imported and from its re-import; umoci unpacks the saved layout to the tree
 * the layers describe.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { buildOci, dir, Entry, file, hardlink, whiteout } from './helpers/image-builder';
import { dmfs } from './helpers/cli-process';
import { sh, tmpdir } from './helpers/tar-helpers';

const PERL = Buffer.from('#!perl\n'.repeat(100));


describe('hard links across layers: save → import → save is a fixed point', () => {
  let work: string;
  beforeAll(() => {
    work = tmpdir('hardlink-rt');
  });

  /** A new pool: each import gets its own, so no layer is reused from another one. */
  function newPool(label: string): string {
    const root = path.join(work, `pool-${label}`);
    expect(dmfs(root, ['pool', 'create', '--size', '1G']).code).toBe(0);
    return root;
  }
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  function ok(root: string, args: string[]): string {
    const r = dmfs(root, args);
    if (r.code !== 0) throw new Error(`dmfs ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  /** Saves `image` and returns the layer diff ids of the saved config. */
  function save(root: string, image: string, out: string): string[] {
    ok(root, ['save', image, '-o', out]);
    const index = JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8'));
    const blob = (d: string): string => path.join(out, 'blobs', 'sha256', d.slice(7));
    const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0].digest), 'utf8'));
    const config = JSON.parse(fs.readFileSync(blob(manifest.config.digest), 'utf8'));
    return config.rootfs.diff_ids;
  }

  /** `dmfs diff` of each layer of the image, bottom first. */
  function diffsOf(root: string, image: string): string[][] {
    const info = JSON.parse(ok(root, ['inspect', image, '--json']));
    const chain = (info.chain as string[]).filter((n) => n !== 'base').reverse();
    return chain.map((layer) => ok(root, ['diff', layer]).split('\n').filter((l) => l !== ''));
  }

  /**
   * The lower layer has /usr/bin/perl and /usr/bin/perl5.36, one inode. `tree` is the
   * upper image's /usr/bin besides `sh`: groups of names that are one inode. A link to a
   * lower file means the file was copied up (as an overlay does): its other lower names
   * keep the lower inode.
   */
  const cases: { name: string; upper: Entry[]; tree: Record<string, string[]> }[] = [
    {
      name: 'a link added to a lower file',
      upper: [dir('usr'), dir('usr/bin'), hardlink('usr/bin/perl5', 'usr/bin/perl')],
      tree: { perl: ['perl', 'perl5'], 'perl5.36': ['perl5.36'] },
    },
    {
      name: 'the same change as Docker writes it (the copied-up file in full, then the link)',
      upper: [dir('usr'), dir('usr/bin'), file('usr/bin/perl', PERL, { mode: 0o755 }), hardlink('usr/bin/perl5', 'usr/bin/perl')],
      tree: { perl: ['perl', 'perl5'], 'perl5.36': ['perl5.36'] },
    },
    {
      name: 'one name of a lower file removed',
      upper: [dir('usr'), dir('usr/bin'), whiteout('usr/bin/perl5.36')],
      tree: { perl: ['perl'] },
    },
    {
      name: 'a link added and a name removed',
      upper: [dir('usr'), dir('usr/bin'), hardlink('usr/bin/perl5', 'usr/bin/perl5.36'), whiteout('usr/bin/perl')],
      tree: { perl5: ['perl5', 'perl5.36'] },
    },
  ];

  const saved: string[][] = [];

  test.each(cases.map((c, i) => [c.name, i] as const))('%s', async (_name, i) => {
    const c = cases[i];
    const tag = `case${i}`;
    const oci = path.join(work, `${tag}-src`);
    await buildOci(oci, [
      { entries: [dir('usr'), dir('usr/bin'), file('usr/bin/perl', PERL, { mode: 0o755 }), hardlink('usr/bin/perl5.36', 'usr/bin/perl'), file('usr/bin/sh', 'sh')] },
      { entries: c.upper },
    ], { ref: tag });
    const rootA = newPool(`${tag}-a`);
    const rootB = newPool(`${tag}-b`);
    ok(rootA, ['import', `${oci}:${tag}`, '--name', tag]);
    const diffsA = diffsOf(rootA, tag);
    const savedA = save(rootA, tag, path.join(work, `${tag}-a`));

    ok(rootB, ['import', `${path.join(work, `${tag}-a`)}:latest`, '--name', tag]);
    const diffsB = diffsOf(rootB, tag);
    const savedB = save(rootB, tag, path.join(work, `${tag}-b`));
    expect(savedB).toEqual(savedA);
    expect(diffsB).toEqual(diffsA);
    saved[i] = savedA;

    // umoci sees the tree the layers describe: the names, one inode per group, the content.
    const bundle = path.join(work, `${tag}-bundle`);
    sh('umoci', ['unpack', '--image', `${path.join(work, `${tag}-b`)}:latest`, bundle]);
    const bin = path.join(bundle, 'rootfs', 'usr', 'bin');
    const names = fs.readdirSync(bin).sort();
    const expected = [...Object.values(c.tree).flat(), 'sh'].sort();
    expect(names).toEqual(expected);
    for (const group of Object.values(c.tree)) {
      const inos = new Set(group.map((n) => fs.statSync(path.join(bin, n)).ino));
      expect(inos.size).toBe(1);
      expect(fs.statSync(path.join(bin, group[0])).nlink).toBe(group.length);
      expect(fs.readFileSync(path.join(bin, group[0])).equals(PERL)).toBe(true);
    }
  }, 120_000);

  test('the layer is a function of the tree: both ways of writing the added link save alike', () => {
    expect(saved[0]).toBeDefined();
    expect(saved[1]).toEqual(saved[0]);
  });

  test('a container that linked a lower file (ln in a mount): committed, saved, re-imported, saved alike', async () => {
    const rootA = newPool('container-a');
    const rootB = newPool('container-b');
    const oci = path.join(work, 'container-src');
    await buildOci(oci, [
      { entries: [dir('usr'), dir('usr/bin'), file('usr/bin/perl', PERL, { mode: 0o755 }), hardlink('usr/bin/perl5.36', 'usr/bin/perl')] },
    ], { ref: 'base' });
    ok(rootA, ['import', `${oci}:base`, '--name', 'debian']);
    const pool = await Pool.open(rootA);
    try {
      await pool.store.createLayer('ctr', { parent: 'debian', kind: 'container' });
      const f = await pool.store.openLayer('ctr');
      const bin = await f.resolve('/usr/bin');
      const perl = (await f.lookup(bin.ino, 'perl'))!;
      await f.link(perl.ino, bin.ino, 'perl5'); // the lower inode itself: three names now
      await f.close();
      await pool.store.commit('ctr', 'debian-perl5');
    } finally {
      await pool.close();
    }
    const diffsA = diffsOf(rootA, 'debian-perl5');
    const savedA = save(rootA, 'debian-perl5', path.join(work, 'container-a-out'));
    ok(rootB, ['import', `${path.join(work, 'container-a-out')}:latest`, '--name', 'debian-perl5']);
    const savedB = save(rootB, 'debian-perl5', path.join(work, 'container-b-out'));
    expect(savedB).toEqual(savedA);
    // The re-import lists the upper layer from its tar: every name of the three-name file.
    expect(diffsOf(rootB, 'debian-perl5')[1]).toEqual(['C /usr/bin', 'A /usr/bin/perl', 'A /usr/bin/perl5', 'A /usr/bin/perl5.36']);
    expect(diffsA[0]).toEqual(diffsOf(rootB, 'debian-perl5')[0]);
    const bundle = path.join(work, 'container-bundle');
    sh('umoci', ['unpack', '--image', `${path.join(work, 'container-b-out')}:latest`, bundle]);
    const bin = path.join(bundle, 'rootfs', 'usr', 'bin');
    const inos = new Set(['perl', 'perl5', 'perl5.36'].map((n) => fs.statSync(path.join(bin, n)).ino));
    expect(inos.size).toBe(1);
    expect(fs.statSync(path.join(bin, 'perl')).nlink).toBe(3);
    expect(fs.readFileSync(path.join(bin, 'perl5')).equals(PERL)).toBe(true);
  }, 120_000);
});
