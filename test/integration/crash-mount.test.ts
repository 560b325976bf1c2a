import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { DMFS_BIN, ensureBuiltDist, REPO_ROOT } from '../support/built-dist';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { applyOp } = require('../support/crash-ops.js');

const ROUNDS = Number(process.env.DMFS_CRASH_ROUNDS ?? 20);
const fuseUsable = process.getuid?.() === 0 && fs.existsSync('/dev/fuse');
if (process.env.CI === 'true' && !fuseUsable) throw new Error('CI=true but FUSE is not usable (need root and /dev/fuse)');

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`dmfs ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

function mountPid(root: string, mountpoint: string): number {
  const layers = JSON.parse(dmfs(root, 'ls', '--json')) as { mounts: { pid: number; mountpoint: string }[] }[];
  for (const l of layers) for (const m of l.mounts) if (m.mountpoint === mountpoint) return m.pid;
  throw new Error(`no mount at ${mountpoint}`);
}

/** Starts the writer, SIGKILLs the mount daemon after killAfterMs, collects BEGIN/ACK lines. */
function runAndKillDaemon(mnt: string, daemonPid: number, seed: number, killAfterMs: number): Promise<{ ops: Record<string, unknown>[]; acked: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'test/support/mount-crash-writer.js'), mnt, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const ops: Record<string, unknown>[] = [];
    let acked = -1;
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('BEGIN ')) ops.push(JSON.parse(line.slice(6)));
        else if (line.startsWith('ACK ')) acked = Number(line.slice(4));
      }
    });
    const timer = setTimeout(() => process.kill(daemonPid, 'SIGKILL'), killAfterMs);
    const guard = setTimeout(() => child.kill('SIGKILL'), killAfterMs + 20000);
    child.on('error', reject);
    child.on('exit', () => {
      clearTimeout(timer);
      clearTimeout(guard);
      resolve({ ops, acked });
    });
  });
}

(fuseUsable ? test : test.skip)(`kill -9 of the mount daemon during writes through FUSE, ${ROUNDS} rounds`, async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-crash-mount-'));
  const root = path.join(base, 'pool');
  const mnt = path.join(base, 'mnt');
  const summary: string[] = [];
  try {
    dmfs(root, 'pool', 'create', '--size', '2G', '--opt', 'dm.min_free_space=0');
    dmfs(root, 'create', '--image', 'img');
    for (let round = 0; round < ROUNDS; round++) {
      dmfs(root, 'create', `c${round}`, '--from', 'img');
      dmfs(root, 'mount', `c${round}`, mnt);
      const pid = mountPid(root, mnt);
      const { ops, acked } = await runAndKillDaemon(mnt, pid, 5000 + round * 7919, 200 + ((round * 131) % 600));
      // The dead mountpoint is recovered by the next mount (lazy unmount, stale records), no manual step.
      const pool = await Pool.open(root);
      try {
        const report = await pool.check();
        expect({ round, problems: report.problems }).toEqual({ round, problems: [] });
        const model = new Map<string, Buffer>();
        for (const op of ops) if ((op.k as number) <= acked) applyOp(model, op);
        const inflight = ops.find((op) => (op.k as number) === acked + 1);
        const touched = new Set<string>(inflight ? [inflight.name as string, (inflight.to as string) ?? ''] : []);
        const layer = await pool.store.openLayer(`c${round}`, { readOnly: true });
        for (const [name, content] of model) {
          if (touched.has(name)) continue;
          const a = await layer.lookup(layer.rootIno, name);
          expect({ round, name, size: a?.sizeBytes }).toEqual({ round, name, size: content.length });
          const back = Buffer.alloc(content.length);
          await layer.read(a!.ino, back, 0);
          expect({ round, name, same: back.equals(content) }).toEqual({ round, name, same: true });
        }
        await layer.close();
        summary.push(`round ${round}: ${acked + 1} ops acknowledged, check clean`);
      } finally {
        await pool.close();
      }
      dmfs(root, 'mount', `c${round}`, mnt);
      expect(fs.readdirSync(mnt).length).toBeGreaterThanOrEqual(0);
      dmfs(root, 'umount', mnt);
    }
    const final = JSON.parse(dmfs(root, 'check', '--json'));
    expect(final.ok).toBe(true);
    // eslint-disable-next-line no-console
    console.log(summary.join('\n'));
  } finally {
    spawnSync('fusermount', ['-uz', mnt]);
    fs.rmSync(base, { recursive: true, force: true });
  }
});
