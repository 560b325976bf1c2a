import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { DMFS_BIN, ensureBuiltDist, REPO_ROOT } from '../support/built-dist';
import { expectAcknowledgedState, runCrashWriter } from '../support/crash-workload';

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
      const { ops, acked } = await runCrashWriter(
        [path.join(REPO_ROOT, 'test/support/mount-crash-writer.js'), mnt, String(5000 + round * 7919)],
        200 + ((round * 131) % 600),
        () => process.kill(pid, 'SIGKILL'),
      );
      // The dead mountpoint is recovered by the next mount (lazy unmount, stale records), no manual step.
      const pool = await Pool.open(root);
      try {
        const report = await pool.check();
        expect({ round, problems: report.problems }).toEqual({ round, problems: [] });
        const layer = await pool.store.openLayer(`c${round}`, { readOnly: true });
        await expectAcknowledgedState(layer, ops, acked, `round ${round}`);
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
}, 300_000); // 20 rounds of mount, write, kill -9, recheck: ~100 s alone, more on a shared machine
