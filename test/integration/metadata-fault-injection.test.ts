/**
 * Issue 11, case 4: damaged metadata never crashes and never reads as data.
 *
 * A small pool (an image with a multi-block file, a hardlink, a symlink, a small inline
 * file; a container on it with a copied-on-write block, a new file and a whiteout) is
 * copied once per page of its metadata file; each copy gets one 4 KiB page of seeded
 * random bytes. Then real `dmfs check --json` and `dmfs mount --ro` processes run on it and
 * every file is read back against the original. Asserted: no process dies of a signal or
 * prints a stack trace, exit codes are 0/1 only, every damaged page that holds live
 * metadata is reported by check (METADATA_CORRUPT, or a problem naming the damage), and no
 * file is read successfully with wrong content. The table printed at the end gives pages
 * corrupted / detected / crashed / read wrong per page role.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBuiltDist, DMFS_BIN } from '../support/built-dist';
import { describeFuse, tempDir } from '../support/fuse-harness';
import { verifyMetadataFile } from '../../src/pool/metadata-verify';

const PAGE_BYTES = 4096;
const PARALLEL = 2;

interface Proc {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function dmfs(root: string, args: string[], timeoutMs = 60_000): Promise<Proc> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [DMFS_BIN, ...args, '--root', root], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

async function dmfsOk(root: string, args: string[]): Promise<string> {
  const r = await dmfs(root, args);
  if (r.code !== 0) throw new Error(`dmfs ${args.join(' ')} failed (${r.code ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Seeded xorshift32: the same damage on every run. */
function randomBytes(seed: number, n: number): Buffer {
  let x = seed >>> 0 || 1;
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** A crash: killed by a signal, an exit code other than 0/1, or a JavaScript stack trace / internal error. */
function crashed(p: Proc): string | null {
  if (p.signal) return `signal ${p.signal}`;
  if (p.code !== 0 && p.code !== 1) return `exit code ${p.code}`;
  if (/internal error|\n\s+at .+:\d+:\d+\)?\n/.test(p.stderr + p.stdout)) return 'stack trace';
  return null;
}

/**
 * Reads until read(2) returns 0, as cat does. (fs.readFile stops at the first short read:
 * a FUSE read that fails in its second block returns the first block, and the EIO comes
 * with the next read, which readFile never makes.)
 */
async function readWhole(file: string): Promise<Buffer> {
  const fd = await fs.promises.open(file, 'r');
  try {
    const parts: Buffer[] = [];
    for (let pos = 0; ; ) {
      const buf = Buffer.alloc(1 << 20);
      const { bytesRead } = await fd.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      parts.push(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return Buffer.concat(parts);
  } finally {
    await fd.close();
  }
}

function jsonOf(p: Proc): Record<string, unknown> | null {
  try {
    return JSON.parse(p.stdout) as Record<string, unknown>;
  } catch {
    return null;
  }
}

describeFuse('damaged metadata pages (fault injection, real check and mount processes)', () => {
  let golden: string;
  let work: string;
  const expected = new Map<string, Buffer>();

  beforeAll(async () => {
    ensureBuiltDist();
    work = tempDir('mdfault');
    golden = path.join(work, 'golden');
    const src = path.join(work, 'src');
    fs.mkdirSync(path.join(src, 'd', 'sub'), { recursive: true });
    const big = randomBytes(1, 5 * 65536 + 1234); // 6 blocks, the last partial
    fs.writeFileSync(path.join(src, 'big'), big);
    fs.linkSync(path.join(src, 'big'), path.join(src, 'd', 'hardlink'));
    fs.writeFileSync(path.join(src, 'small'), 'small file, kept inline\n');
    fs.writeFileSync(path.join(src, 'd', 'sub', 'medium'), randomBytes(2, 70_000));
    fs.writeFileSync(path.join(src, 'd', 'gone'), 'whited out in the container\n');
    fs.symlinkSync('../big', path.join(src, 'd', 'link'));
    await dmfsOk(golden, ['pool', 'create', '--size', '1G']);
    await dmfsOk(golden, ['import', src, '--name', 'img']);
    await dmfsOk(golden, ['create', 'ctr', '--from', 'img']);
    const mp = path.join(work, 'mnt-golden');
    await dmfsOk(golden, ['mount', 'ctr', mp]);
    try {
      const fd = await fs.promises.open(path.join(mp, 'big'), 'r+');
      await fd.write(randomBytes(3, 4096), 0, 4096, 65536 + 100); // CoW of one block
      await fd.close();
      await fs.promises.writeFile(path.join(mp, 'new'), randomBytes(4, 130_000));
      await fs.promises.unlink(path.join(mp, 'd', 'gone'));
    } finally {
      await dmfsOk(golden, ['umount', mp]);
    }
    randomBytes(3, 4096).copy(big, 65536 + 100);
    expected.set('big', big);
    expected.set('d/hardlink', big);
    expected.set('small', Buffer.from('small file, kept inline\n'));
    expected.set('d/sub/medium', randomBytes(2, 70_000));
    expected.set('d/link', big); // read through the symlink
    expected.set('new', randomBytes(4, 130_000));
    // The golden pool reads right, and check calls it consistent.
    expect((await dmfs(golden, ['check', '--json'])).code).toBe(0);
  }, 300_000);

  afterAll(async () => {
    if (!work) return;
    for (const line of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const mp = line.split(' ')[1];
      if (mp?.startsWith(work + '/')) await new Promise((r) => spawn('fusermount', ['-uz', mp]).on('close', r));
    }
    if (!process.env.DMFS_KEEP_FAULT_POOL) fs.rmSync(work, { recursive: true, force: true });
    else console.log(`kept ${work}`);
  });

  /** A copy of the golden pool whose data.mdb page `pgno` holds random bytes; the data file is shared (hardlink, nothing writes it: check without --repair, read-only mounts). */
  function damagedCopy(pgno: number, usedPages: number): string {
    const root = path.join(work, `p${pgno}`);
    for (const d of ['metadata', 'data', 'run']) fs.mkdirSync(path.join(root, d), { recursive: true });
    for (const e of fs.readdirSync(golden, { withFileTypes: true })) if (e.isFile()) fs.copyFileSync(path.join(golden, e.name), path.join(root, e.name));
    fs.copyFileSync(path.join(golden, 'metadata', 'FORMAT'), path.join(root, 'metadata', 'FORMAT'));
    for (const f of fs.readdirSync(path.join(golden, 'data'))) fs.linkSync(path.join(golden, 'data', f), path.join(root, 'data', f));
    // data.mdb is a sparse file of the map size: copy the used pages, keep the length.
    const from = path.join(golden, 'metadata', 'data.mdb');
    const to = path.join(root, 'metadata', 'data.mdb');
    const used = Buffer.alloc(usedPages * PAGE_BYTES);
    const fd = fs.openSync(from, 'r');
    fs.readSync(fd, used, 0, used.length, 0);
    fs.closeSync(fd);
    randomBytes(0x9e3779b9 ^ pgno, PAGE_BYTES).copy(used, pgno * PAGE_BYTES);
    fs.writeFileSync(to, used, { mode: 0o644 });
    fs.truncateSync(to, fs.statSync(from).size);
    return root;
  }

  interface Outcome {
    pgno: number;
    role: string;
    check: Proc;
    checkReported: boolean;
    mount: Proc;
    mounted: boolean;
    readRight: number;
    readFailed: number;
    readWrong: string[];
    crash: string | null;
  }

  async function probe(pgno: number, role: string, usedPages: number): Promise<Outcome> {
    const root = damagedCopy(pgno, usedPages);
    const check = await dmfs(root, ['check', '--json']);
    const cj = jsonOf(check);
    const checkReported =
      check.code === 1 &&
      ((cj?.error as { code?: string } | undefined)?.code === 'METADATA_CORRUPT' || (Array.isArray(cj?.problems) && (cj!.problems as unknown[]).length > 0));
    const mp = path.join(work, `mnt-p${pgno}`); // outside the pool: a mountpoint inside it is refused
    const mount = await dmfs(root, ['mount', 'ctr', mp, '--ro', '--json']);
    const out: Outcome = { pgno, role, check, checkReported, mount, mounted: mount.code === 0, readRight: 0, readFailed: 0, readWrong: [], crash: crashed(check) ?? crashed(mount) };
    if (out.mounted) {
      try {
        for (const [rel, want] of expected) {
          let got: Buffer;
          try {
            got = await readWhole(path.join(mp, rel));
          } catch {
            out.readFailed++;
            continue;
          }
          if (got.equals(want)) out.readRight++;
          else out.readWrong.push(rel);
        }
      } finally {
        const um = await dmfs(root, ['umount', mp]);
        out.crash ??= crashed(um);
        if (um.code !== 0) await new Promise((r) => spawn('fusermount', ['-uz', mp]).on('close', r));
      }
    } else {
      const mj = jsonOf(mount);
      // A refused mount says why with a stable code.
      expect(['METADATA_CORRUPT', 'DATA_CORRUPT', 'MOUNT_FAILED']).toContain((mj?.error as { code?: string } | undefined)?.code);
    }
    fs.rmSync(root, { recursive: true, force: true });
    return out;
  }

  it('no crash, no wrong read, every page holding live metadata reported', async () => {
    const report = verifyMetadataFile(path.join(golden, 'metadata', 'data.mdb'), { roles: true });
    expect(report.sound).toBe(true);
    const roles = report.roles!;
    const pages = roles.map((_, i) => i);
    const outcomes: Outcome[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < pages.length) {
          const p = pages[next++];
          outcomes.push(await probe(p, roles[p], roles.length));
        }
      }),
    );
    outcomes.sort((a, b) => a.pgno - b.pgno);

    const group = (o: Outcome) => (o.role === 'free page' || o.role === 'unused' ? 'free' : o.role.startsWith('previous') ? 'previous snapshot' : o.role.endsWith(' overflow') ? 'overflow continuation' : o.role === 'meta' ? 'meta' : 'tree page');
    const rows = new Map<string, { corrupted: number; detected: number; crashed: number; readWrong: number; mountRefused: number }>();
    for (const o of outcomes) {
      const g = group(o);
      const r = rows.get(g) ?? { corrupted: 0, detected: 0, crashed: 0, readWrong: 0, mountRefused: 0 };
      r.corrupted++;
      if (o.checkReported) r.detected++;
      if (o.crash) r.crashed++;
      if (o.readWrong.length) r.readWrong++;
      if (!o.mounted) r.mountRefused++;
      rows.set(g, r);
    }
    const total = [...rows.values()].reduce((s, r) => ({ corrupted: s.corrupted + r.corrupted, detected: s.detected + r.detected, crashed: s.crashed + r.crashed, readWrong: s.readWrong + r.readWrong, mountRefused: s.mountRefused + r.mountRefused }));
    const lines = [
      `metadata fault injection: ${outcomes.length} pages of ${path.join('POOL', 'metadata', 'data.mdb')} (${os.cpus().length} cpus, ${PARALLEL} at a time)`,
      'pages                   corrupted  detected  crashed  read-wrong  mount-refused',
      ...[...rows, ['total', total] as const].map(([g, r]) => `${String(g).padEnd(24)}${String(r.corrupted).padStart(9)}${String(r.detected).padStart(10)}${String(r.crashed).padStart(9)}${String(r.readWrong).padStart(12)}${String(r.mountRefused).padStart(15)}`),
      ...outcomes.map((o) => `  page ${String(o.pgno).padStart(2)} ${o.role.padEnd(26)} check ${o.check.code}${o.checkReported ? ' reported' : ''}; mount ${o.mounted ? `read ${o.readRight} right, ${o.readFailed} failed, ${o.readWrong.length} wrong` : 'refused'}${o.crash ? `; CRASH ${o.crash}` : ''}`),
    ];
    // eslint-disable-next-line no-console
    console.log(lines.join('\n'));

    for (const o of outcomes) {
      expect({ pgno: o.pgno, crash: o.crash }).toEqual({ pgno: o.pgno, crash: null });
      expect({ pgno: o.pgno, readWrong: o.readWrong }).toEqual({ pgno: o.pgno, readWrong: [] });
      // Free pages hold nothing: damage there is harmless (LMDB overwrites them before use)
      // and cannot be told apart from stale content. Every other page must be reported.
      if (group(o) !== 'free') expect({ pgno: o.pgno, role: o.role, reported: o.checkReported }).toEqual({ pgno: o.pgno, role: o.role, reported: true });
      else expect({ pgno: o.pgno, readRight: o.readRight }).toEqual({ pgno: o.pgno, readRight: expected.size });
    }
  }, 600_000);
});
