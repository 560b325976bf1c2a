/**
 * dmfs import / diff / export / save through main(), on a real pool, and the progress bar.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { main } from '../../../src/cli/main';
import { Pool } from '../../../src/api';
import { formatBytes, formatDuration, ProgressBar } from '../../../src/cli/progress';
import { readTar } from '../../../src/image/tar-reader';
import { buildOci, dir, file, opaque, whiteout } from './helpers/image-builder';
import { chunked, tmpdir } from './helpers/tar-helpers';

function capture(): { stream: PassThrough; text: () => string; bytes: () => Buffer } {
  const stream = new PassThrough();
  const parts: Buffer[] = [];
  stream.on('data', (c: Buffer) => parts.push(c));
  return { stream, text: () => Buffer.concat(parts).toString('utf8'), bytes: () => Buffer.concat(parts) };
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string; outBytes: Buffer }> {
  const out = capture();
  const err = capture();
  const code = await main(argv, { stdout: out.stream, stderr: err.stream });
  return { code, out: out.text(), err: err.text(), outBytes: out.bytes() };
}

describe('image commands', () => {
  let work: string;
  let root: string;
  let oci: string;
  beforeAll(async () => {
    work = tmpdir('cli');
    root = path.join(work, 'pool');
    const pool = await Pool.create({ root, sizeBytes: 4 * 1024 ** 3 });
    await pool.close();
    oci = path.join(work, 'oci');
    await buildOci(oci, [
      { entries: [dir('etc'), file('etc/a', 'A'), file('etc/b', 'B'), dir('var'), file('var/x', 'X')] },
      { entries: [whiteout('etc/a'), file('etc/c', 'C'), opaque('var'), file('var/y', 'Y')] },
    ], { ref: '1.0' });
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  test('import --json, then again (reused)', async () => {
    const r = await run(['import', `${oci}:1.0`, '--name', 'app:1.0', '--root', root, '--json']);
    expect(r.code).toBe(0);
    expect(r.err).toBe(''); // no progress bar when not a TTY / with --json
    const res = JSON.parse(r.out);
    expect(res).toMatchObject({ name: 'app:1.0', format: 'oci-layout', alreadyPresent: false });
    expect(res.layers).toHaveLength(2);
    const again = await run(['import', `${oci}:1.0`, '--name', 'app:1.0', '--root', root]);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/2 layer\(s\), 0 new, 2 reused/);
  });

  test('diff, human and --json', async () => {
    const r = await run(['diff', 'app:1.0', '--root', root]);
    expect(r.code).toBe(0);
    expect(r.out.split('\n')).toEqual(expect.arrayContaining(['D /etc/a', 'A /etc/c', 'O /var', 'A /var/y']));
    const j = JSON.parse((await run(['diff', 'app:1.0', '--root', root, '--json'])).out);
    expect(j).toEqual(expect.arrayContaining([expect.objectContaining({ path: '/etc/c', change: 'added', kind: 'file', sizeBytes: 1 })]));
  });

  test('export to a file and to stdout', async () => {
    const out = path.join(work, 'layer.tar');
    const r = await run(['export', 'app:1.0', '-o', out, '--root', root]);
    expect(r.code).toBe(0);
    const names: string[] = [];
    for await (const { entry } of readTar(chunked(fs.readFileSync(out)))) names.push(entry.path);
    expect(names).toEqual(expect.arrayContaining(['etc/.wh.a', 'etc/c', 'var/.wh..wh..opq', 'var/y']));
    const s = await run(['export', 'app:1.0', '-o', '-', '--root', root]);
    expect(s.outBytes.equals(fs.readFileSync(out))).toBe(true);
    const full = path.join(work, 'full.tar');
    expect((await run(['export', 'app:1.0', '-o', full, '--full', '--root', root])).code).toBe(0);
    const fullNames: string[] = [];
    for await (const { entry } of readTar(chunked(fs.readFileSync(full)))) fullNames.push(entry.path);
    expect(fullNames.sort()).toEqual(['etc/', 'etc/b', 'etc/c', 'var/', 'var/y']);
  });

  test('save to a directory and to a .tar', async () => {
    const dirOut = path.join(work, 'saved');
    const r = await run(['save', 'app:1.0', '-o', dirOut, '--root', root, '--json']);
    expect(r.code).toBe(0);
    const res = JSON.parse(r.out);
    expect(res.ref).toBe('1.0');
    const index = JSON.parse(fs.readFileSync(path.join(dirOut, 'index.json'), 'utf8'));
    expect(index.manifests[0].annotations['org.opencontainers.image.ref.name']).toBe('1.0');
    expect((await run(['save', 'app:1.0', '-o', path.join(work, 'saved.tar'), '--root', root])).code).toBe(0);
    expect((await run(['import', path.join(work, 'saved.tar'), '--name', 'copy', '--root', root])).code).toBe(0);
  });

  test('errors: unknown layer, missing -o, bad source', async () => {
    expect((await run(['export', 'nope', '-o', path.join(work, 'x.tar'), '--root', root])).code).toBe(1);
    expect(fs.existsSync(path.join(work, 'x.tar'))).toBe(false);
    expect((await run(['export', 'app:1.0', '--root', root])).code).toBe(2);
    const bad = path.join(work, 'bad.tar');
    fs.writeFileSync(bad, Buffer.alloc(700, 0x41));
    const r = await run(['import', bad, '--name', 'bad', '--root', root, '--json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out).error.code).toBe('BAD_IMAGE');
  });
});

describe('progress bar', () => {
  test('silent when not a TTY', () => {
    const writes: string[] = [];
    const bar = new ProgressBar({ isTTY: false, write: (s) => writes.push(s) > 0 });
    bar.update({ bytesDone: 1, bytesTotal: 2, layersDone: 0, layersTotal: 1 }, true);
    bar.done();
    expect(writes).toEqual([]);
  });

  test('draws bytes, layers, rate and ETA on a TTY, throttled, and clears at the end', () => {
    let now = 0;
    const writes: string[] = [];
    const bar = new ProgressBar({ isTTY: true, columns: 100, write: (s) => writes.push(s) > 0 }, { label: 'Importing', now: () => now, intervalMs: 100 });
    bar.update({ bytesDone: 0, bytesTotal: 100 << 20, layersDone: 0, layersTotal: 3 });
    now = 50;
    bar.update({ bytesDone: 1 << 20, bytesTotal: 100 << 20, layersDone: 0, layersTotal: 3 }); // throttled
    now = 1000;
    bar.update({ bytesDone: 10 << 20, bytesTotal: 100 << 20, layersDone: 1, layersTotal: 3 });
    expect(writes).toHaveLength(2);
    const line = writes[1];
    expect(line).toContain('Importing [');
    expect(line).toContain(' 10% ');
    expect(line).toContain('10.0 MiB/100 MiB');
    expect(line).toContain('layer 2/3');
    expect(line).toContain('10.0 MiB/s');
    expect(line).toContain('ETA 0:09');
    bar.done();
    expect(writes[2]).toBe('\r\x1b[K');
  });

  test('formatting helpers', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(200 * 1024 ** 2)).toBe('200 MiB');
    expect(formatDuration(3725)).toBe('1:02:05');
    expect(formatDuration(Infinity)).toBe('--:--');
  });
});
