import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBuiltDist, REPO_ROOT } from '../support/built-dist';

const fuseUsable = process.getuid?.() === 0 && fs.existsSync('/dev/fuse');
if (process.env.CI === 'true' && !fuseUsable) throw new Error('CI=true but FUSE is not usable (need root and /dev/fuse)');

beforeAll(() => ensureBuiltDist());

(fuseUsable ? test : test.skip)('npm run demo runs twice on its own pool and leaves nothing mounted', () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-demo-test-'));
  const env = { ...process.env, DMFS_ROOT: path.join(base, 'pool'), DMFS_DEMO_MOUNTPOINT: path.join(base, 'mnt') };
  try {
    for (let run = 0; run < 2; run++) {
      const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'examples/demo.js')], { env, encoding: 'utf8' });
      expect({ run, status: r.status, stderr: r.stderr }).toEqual({ run, status: 0, stderr: '' });
      expect(r.stdout).toMatch(/dmfs-demo\s+\d+\s+container\s+dmfs-demo-image .* 64\.0 KiB/);
      expect(r.stdout).toMatch(/D \/etc\/hostname/);
      expect(r.stdout).toMatch(/unmounted/);
    }
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(path.join(base, 'mnt'));
  } finally {
    spawnSync('fusermount', ['-uz', path.join(base, 'mnt')]);
    fs.rmSync(base, { recursive: true, force: true });
  }
});
