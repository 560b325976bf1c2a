/**
 * Issue 11, case 10: a layer tar without its end-of-archive blocks (what `umoci insert`
 * writes; Go's archive/tar accepts it) imports with one warning, while an archive that
 * ends inside a header, a pending extended header or an entry's content is still
 * BAD_IMAGE and leaves the pool as it was.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readTar } from '../../../src/image/tar-reader';
import { buildOci, dir, file } from './helpers/image-builder';
import { dmfs } from './helpers/cli-process';
import { chunked, codeOf, END, pad512, paxBlock, rawHeader, sh, tmpdir, writeTar } from './helpers/tar-helpers';

async function read(tar: Buffer): Promise<{ names: string[]; contents: string[]; warnings: string[] }> {
  const warnings: string[] = [];
  const names: string[] = [];
  const contents: string[] = [];
  for await (const { entry, body } of readTar(chunked(tar), { onWarning: (m) => warnings.push(m) })) {
    names.push(entry.path);
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c.data);
    contents.push(Buffer.concat(parts).toString());
  }
  return { names, contents, warnings };
}

async function readCode(tar: Buffer): Promise<string> {
  return codeOf(read(tar));
}

const a = Buffer.concat([rawHeader({ name: 'a', size: 5 }), pad512(Buffer.from('hello'))]);
const bHeader = rawHeader({ name: 'b', size: 700 });
const bData = Buffer.alloc(700, 0x62);
const full = Buffer.concat([a, bHeader, pad512(bData), END]);

describe('tar reader: where an archive may end', () => {
  test('a complete archive: no warning', async () => {
    const r = await read(full);
    expect(r.names).toEqual(['a', 'b']);
    expect(r.warnings).toEqual([]);
  });

  test('at a header boundary without end blocks: accepted, one warning', async () => {
    const r = await read(Buffer.concat([a, bHeader, pad512(bData)]));
    expect(r.names).toEqual(['a', 'b']);
    expect(r.contents[1]).toBe(bData.toString());
    expect(r.warnings).toHaveLength(1);
  });

  test('right after the last content byte (no padding, as umoci insert writes): accepted, one warning', async () => {
    const r = await read(Buffer.concat([a, bHeader, bData]));
    expect(r.names).toEqual(['a', 'b']);
    expect(r.contents).toEqual(['hello', bData.toString()]);
    expect(r.warnings).toHaveLength(1);
  });

  test('inside the last padding, body left unread: accepted, one warning', async () => {
    const warnings: string[] = [];
    const names: string[] = [];
    for await (const { entry } of readTar(chunked(Buffer.concat([a, bHeader, bData, Buffer.alloc(100)])), { onWarning: (m) => warnings.push(m) })) {
      names.push(entry.path);
    }
    expect(names).toEqual(['a', 'b']);
    expect(warnings).toHaveLength(1);
  });

  test('after a lone zero block: accepted, one warning', async () => {
    const r = await read(Buffer.concat([a, Buffer.alloc(512)]));
    expect(r.names).toEqual(['a']);
    expect(r.warnings).toHaveLength(1);
  });

  test('an empty input: no entries, one warning', async () => {
    const r = await read(Buffer.alloc(0));
    expect(r.names).toEqual([]);
    expect(r.warnings).toHaveLength(1);
  });

  test('inside a header: BAD_IMAGE', async () => {
    expect(await readCode(Buffer.concat([a, bHeader.subarray(0, 200)]))).toBe('BAD_IMAGE');
  });

  test('inside the content, read or skipped: BAD_IMAGE', async () => {
    expect(await readCode(Buffer.concat([a, bHeader, bData.subarray(0, 699)]))).toBe('BAD_IMAGE');
    expect(await readCode(Buffer.concat([a, bHeader]))).toBe('BAD_IMAGE');
    const skipping = async (): Promise<void> => {
      for await (const item of readTar(chunked(Buffer.concat([a, bHeader, bData.subarray(0, 300)])))) void item;
    };
    expect(await codeOf(skipping())).toBe('BAD_IMAGE');
  });

  test('after an extended header with no entry: BAD_IMAGE', async () => {
    expect(await readCode(Buffer.concat([a, paxBlock('PaxHeader', { path: 'long' })]))).toBe('BAD_IMAGE');
    // The pax records' own padding cut short: still inside the headers of an entry.
    const pax = paxBlock('PaxHeader', { path: 'long' });
    expect(await readCode(Buffer.concat([a, pax.subarray(0, 530)]))).toBe('BAD_IMAGE');
  });
});

describe('dmfs import of layers without end blocks (real CLI)', () => {
  let work: string;
  let root: string;
  beforeAll(() => {
    work = tmpdir('tar-end');
    root = path.join(work, 'pool');
    expect(dmfs(root, ['pool', 'create', '--size', '1G']).code).toBe(0);
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  function layers(): unknown {
    const r = dmfs(root, ['ls', '--json']);
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout);
  }

  test('a layer tar that stops after its last content byte: imported, one warning line on stderr, clean --json stdout', async () => {
    const tar = await writeTar([dir('etc'), file('etc/hostname', 'box\n')], false);
    // writeTar without finish pads the content; cut the padding too, as umoci insert does.
    const cut = tar.subarray(0, tar.length - (512 - 4));
    const p = path.join(work, 'layer.tar');
    fs.writeFileSync(p, cut);
    const r = dmfs(root, ['import', p, '--name', 'noend', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'noend' });
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^warning: .*end-of-archive/);
    const d = dmfs(root, ['diff', 'noend']);
    expect(d.stdout.split('\n')).toEqual(expect.arrayContaining(['A /etc', 'A /etc/hostname']));
    expect(dmfs(root, ['check']).code).toBe(0);
  });

  test('an OCI layout made by umoci insert imports', async () => {
    const oci = path.join(work, 'umoci');
    const src = path.join(work, 'umoci-src');
    fs.mkdirSync(path.join(src, 'x'), { recursive: true });
    fs.writeFileSync(path.join(src, 'x', 'f'), 'hi\n');
    sh('umoci', ['init', '--layout', oci]);
    sh('umoci', ['new', '--image', `${oci}:t`]);
    sh('umoci', ['insert', '--image', `${oci}:t`, src, '/opt']);
    const r = dmfs(root, ['import', `${oci}:t`, '--name', 'umoci-insert']);
    expect(r.code).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('warning:')).length).toBeLessThanOrEqual(1);
    expect(dmfs(root, ['diff', 'umoci-insert']).stdout.split('\n')).toEqual(expect.arrayContaining(['A /opt/x/f']));
  });

  test('cut inside a header or inside content: BAD_IMAGE, pool unchanged', async () => {
    const before = layers();
    const tar = await writeTar([dir('etc'), file('etc/big', Buffer.alloc(3000, 7))]);
    const headerAt = 512; // etc/ is one header block; etc/big's header starts here
    const cuts = { 'mid-header': tar.subarray(0, headerAt + 100), 'mid-content': tar.subarray(0, headerAt + 512 + 1000) };
    for (const [label, bytes] of Object.entries(cuts)) {
      const p = path.join(work, `${label}.tar`);
      fs.writeFileSync(p, bytes);
      const r = dmfs(root, ['import', p, '--name', label, '--json']);
      expect(r.code).not.toBe(0);
      expect(JSON.parse(r.stdout).error.code).toBe('BAD_IMAGE');
      expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
      expect(layers()).toEqual(before);
    }
    const gz = path.join(work, 'mid-content.tar.gz');
    fs.writeFileSync(gz, sh('gzip', ['-c'], { input: cuts['mid-content'] }));
    const g = dmfs(root, ['import', gz, '--name', 'gz', '--json']);
    expect(JSON.parse(g.stdout).error.code).toBe('BAD_IMAGE');
    expect(layers()).toEqual(before);
    expect(dmfs(root, ['check']).code).toBe(0);
  });
});
