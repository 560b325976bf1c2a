/**
 * Issue 11, case 9: a tree 10,000 directories deep (paths of 20,000 bytes, far past
 * PATH_MAX) goes through import, export (changes and --full), diff, save and check in
 * time and memory linear in the entries. Each command runs as a real CLI process under
 * /usr/bin/time; its CPU time (user + system: the host is shared, wall time is not a
 * measure of the code) and peak RSS are bounded. Before the fix export took 3.5 minutes
 * and ran out of heap; diff and save did not finish in 4 minutes.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readTar } from '../../../src/image/tar-reader';
import { canMeasureRss, CliRun, dmfs, TIME_BIN } from './helpers/cli-process';
import { DEEP_CONTENT, DEEP_FILE, deepDirPath, writeDeepTar } from './helpers/deep-tree';
import { tmpdir } from './helpers/tar-helpers';

const DEPTH = 10_000;
/** The bounds: under 10 s and 200 MB RSS per command. */
const MAX_CPU_SECONDS = 10;
const MAX_RSS_KIB = 200 * 1024;

/** Entry paths of a tar file, streamed (no whole-file buffer), and the bottom file's content. */
async function tarSummary(file: string): Promise<{ entries: number; deepest: string; bottom: string | null }> {
  let entries = 0;
  let deepest = '';
  let bottom: string | null = null;
  for await (const { entry, body } of readTar(fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>)) {
    entries++;
    if (entry.path.length > deepest.length) deepest = entry.path;
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c.data);
    if (entry.path.endsWith(`/${DEEP_FILE}`)) bottom = Buffer.concat(parts).toString();
  }
  return { entries, deepest, bottom };
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

const describeMeasured = canMeasureRss ? describe : describe.skip;
if (!canMeasureRss) console.warn(`deep-tree tests skipped: ${TIME_BIN} (GNU time) is not installed`);

describeMeasured(`a tree ${DEPTH} directories deep`, () => {
  let work: string;
  let root: string;
  const figures: string[] = [];
  const bottomPath = `${deepDirPath(DEPTH)}/${DEEP_FILE}`;

  function measured(label: string, args: string[]): CliRun {
    const r = dmfs(root, args, { measure: true, timeoutMs: 240_000 });
    figures.push(`${label}: ${r.cpuSeconds?.toFixed(2)} s CPU, ${(r.elapsedMs / 1000).toFixed(2)} s wall, ${Math.round((r.maxRssKiB ?? 0) / 1024)} MB RSS`);
    if (r.code !== 0) throw new Error(`dmfs ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    expect(r.stderr).not.toMatch(/internal error|heap out of memory/);
    expect(r.cpuSeconds).toBeLessThan(MAX_CPU_SECONDS);
    expect(r.maxRssKiB).toBeLessThan(MAX_RSS_KIB);
    return r;
  }

  beforeAll(async () => {
    work = tmpdir('deep');
    root = path.join(work, 'pool');
    expect(dmfs(root, ['pool', 'create', '--size', '4G']).code).toBe(0);
    await writeDeepTar(path.join(work, 'deep.tar'), DEPTH);
  }, 120_000);
  afterAll(() => {
    console.log(`deep tree, ${DEPTH} levels:\n  ${figures.join('\n  ')}`);
    fs.rmSync(work, { recursive: true, force: true });
  });

  test('import', () => {
    measured('import', ['import', path.join(work, 'deep.tar'), '--name', 'deep']);
  }, 300_000);

  test('diff lists every level, parents first', () => {
    const r = measured('diff', ['diff', 'deep']);
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(DEPTH + 1);
    expect(lines[0]).toBe('A /d');
    expect(lines[1]).toBe('A /d/d');
    expect(lines[DEPTH]).toBe(`A /${bottomPath}`);
  }, 300_000);

  test('export: every entry with its whole path, byte for byte the tar it was imported from', async () => {
    const out = path.join(work, 'changes.tar');
    measured('export', ['export', 'deep', '-o', out]);
    const s = await tarSummary(out);
    expect(s.entries).toBe(DEPTH + 1);
    expect(s.deepest).toBe(bottomPath);
    expect(s.bottom).toBe(DEEP_CONTENT.toString());
    // The input was written by dmfs's own tar writer in tree order: a fixed point.
    expect(await sha256File(out)).toBe(await sha256File(path.join(work, 'deep.tar')));
  }, 300_000);

  test('export --full', async () => {
    const out = path.join(work, 'full.tar');
    measured('export --full', ['export', 'deep', '-o', out, '--full']);
    const s = await tarSummary(out);
    expect(s.entries).toBe(DEPTH + 1);
    expect(s.deepest).toBe(bottomPath);
  }, 300_000);

  test('save: an OCI layout whose layer holds the tree', () => {
    const out = path.join(work, 'oci');
    measured('save', ['save', 'deep', '-o', out]);
    const index = JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8'));
    expect(index.manifests).toHaveLength(1);
  }, 300_000);

  test('check', () => {
    const r = measured('check', ['check', '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, problems: [] });
  }, 300_000);
});
