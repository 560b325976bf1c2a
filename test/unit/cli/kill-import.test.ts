import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  return spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
}

function state(root: string): string {
  const ls = JSON.parse(dmfs(root, 'ls', '--json').stdout) as Record<string, unknown>[];
  const info = JSON.parse(dmfs(root, 'info', '--json').stdout);
  return JSON.stringify({ layers: ls.map((l) => [l.name, l.kind, l.state, l.exclusiveBytes]), used: info.dataSpaceUsedBytes });
}

test('dmfs import and dmfs commit killed part-way leave the pool as before or as after, never between', async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-kill-import-'));
  const root = path.join(base, 'pool');
  try {
    // A three-layer OCI image big enough to be caught mid-import (60 MiB in 600 files per layer),
    // written by dmfs save from a scratch pool.
    const scratch = path.join(base, 'scratch');
    const pool = await Pool.create({ root: scratch, sizeBytes: 2 * 1024 ** 3 });
    let parent = 'base';
    for (let layer = 0; layer < 3; layer++) {
      await pool.store.createLayer(`l${layer}`, { parent, kind: 'image', building: true });
      const l = await pool.store.openLayer(`l${layer}`);
      const d = await l.mkdir(l.rootIno, `d${layer}`, { mode: 0o755, uid: 0, gid: 0 });
      for (let f = 0; f < 100; f++) {
        const a = await l.mknod(d.ino, `f${f}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
        await l.write(a.ino, Buffer.alloc(100 * 1024, (layer * 50 + f) % 255), 0);
      }
      await l.close();
      await pool.store.sealLayer(`l${layer}`);
      parent = `l${layer}`;
    }
    await pool.close();
    const tar = path.join(base, 'image-oci');
    const saved = dmfs(scratch, 'save', 'l2', '-o', tar);
    expect(saved.stderr).toBe('');
    expect(saved.status).toBe(0);
    expect(dmfs(root, 'pool', 'create', '--size', '4G').status).toBe(0);
    expect(dmfs(root, 'create', 'c0').status).toBe(0);
    const before = state(root);
    const outcomes: string[] = [];
    for (let round = 0; round < 6; round++) {
      const child = spawn(process.execPath, [DMFS_BIN, 'import', tar, '--name', `img${round}`, '--root', root], { stdio: 'ignore' });
      const exited = new Promise((r) => child.on('exit', r));
      await new Promise((r) => setTimeout(r, 300 + round * 200));
      child.kill('SIGKILL');
      await exited;
      const after = state(root);
      const imported = JSON.parse(dmfs(root, 'ls', '--json').stdout).some((l: { name: string }) => l.name === `img${round}`);
      if (imported) {
        outcomes.push(`round ${round}: finished before the kill`);
        const chain = (JSON.parse(dmfs(root, 'ls', '--json').stdout) as { name: string }[]).map((l) => l.name).filter((n) => n !== 'base' && n !== 'c0').reverse();
        expect(dmfs(root, 'rm', ...chain).status).toBe(0);
        expect(state(root)).toBe(before);
      } else {
        outcomes.push(`round ${round}: killed mid-import, rolled back`);
        expect(after).toBe(before);
      }
      const check = JSON.parse(dmfs(root, 'check', '--json').stdout);
      expect(check.problems).toEqual([]);
    }
    // commit is one metadata transaction: killed or not, the layer set is before or after.
    const child = spawn(process.execPath, [DMFS_BIN, 'commit', 'c0', 'snap', '--root', root], { stdio: 'ignore' });
    const exited = new Promise((r) => child.on('exit', r));
    await new Promise((r) => setTimeout(r, 250));
    child.kill('SIGKILL');
    await exited;
    const names = (JSON.parse(dmfs(root, 'ls', '--json').stdout) as { name: string; parent: string }[]).map((l) => `${l.name}<-${l.parent}`).sort();
    expect([['base<-null', 'c0<-base'], ['base<-null', 'c0<-snap', 'snap<-base']]).toContainEqual(names);
    expect(JSON.parse(dmfs(root, 'check', '--json').stdout).ok).toBe(true);
    // eslint-disable-next-line no-console
    console.log(outcomes.join('\n'));
    expect(outcomes.some((o) => o.includes('rolled back'))).toBe(true);
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});
