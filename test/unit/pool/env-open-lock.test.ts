/**
 * Opening the metadata environment in one process while another commits loses no commit
 * (src/pool/env-open-lock.ts). Without the lock, lmdb-js 2.9 lets an opening process put the
 * shared "last txnid" back by one; a writer committing in a loop then reads its own last
 * commit as gone, loses it, or crashes (MDB_BAD_TXN, SIGSEGV) within a few dozen opens.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadFileLock } from '../../../src/native';
import { ENV_OPEN_LOCK_FILE } from '../../../src/pool/env-open-lock';
import { MetadataEnv } from '../../../src/pool/metadata-env';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';

const ENV_MODULE = path.join(REPO_ROOT, 'dist', 'pool', 'metadata-env.js');
const OPENERS = 30;

/** Commits counter values 1, 2, ... into table 'count' until `stop` exists; checks each one reads back. */
const WRITER = `
const fs = require('node:fs');
const { MetadataEnv } = require(${JSON.stringify(ENV_MODULE)});
const [dir, stop, ready] = process.argv.slice(1);
const env = MetadataEnv.open(dir, { create: false });
const t = env.table('count');
let n = 0, stale = 0;
fs.writeFileSync(ready, '');
function round() {
  for (let k = 0; k < 200; k++) {
    const seen = t.get(1);
    if ((seen ? seen.readUInt32LE(0) : 0) !== n) stale++;
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n + 1);
    env.txn(() => t.put(1, b));
    n++;
  }
  if (fs.existsSync(stop)) env.close().then(() => { process.stdout.write(JSON.stringify({ n, stale })); });
  else setImmediate(round);
}
round();`;

/** Opens the environment, commits its own key into table 'openers', closes. */
const OPENER = `
const { MetadataEnv } = require(${JSON.stringify(ENV_MODULE)});
const env = MetadataEnv.open(process.argv[1], { create: false });
env.txn(() => env.table('openers').put(process.pid, Buffer.from('x')));
env.close();`;

const lockable = loadFileLock() !== null;

(lockable ? describe : describe.skip)('metadata environment open lock', () => {
  let dir: string;

  beforeAll(() => ensureBuiltDist());
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-open-lock-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it(`a writer committing in a loop loses nothing while ${OPENERS} other processes open the environment and commit`, async () => {
    const meta = path.join(dir, 'metadata');
    const created = MetadataEnv.open(meta, { create: true });
    created.txn(() => created.table('count').put(0, Buffer.from('made')));
    await created.close();
    expect(fs.existsSync(path.join(meta, ENV_OPEN_LOCK_FILE))).toBe(true);

    const stop = path.join(dir, 'stop');
    const ready = path.join(dir, 'ready');
    const writer = spawn(process.execPath, ['-e', WRITER, meta, stop, ready], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    writer.stdout.on('data', (d) => (out += d));
    writer.stderr.on('data', (d) => (err += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => writer.on('exit', (code, signal) => r({ code, signal })));
    while (!fs.existsSync(ready)) await new Promise((r) => setTimeout(r, 10));

    const openers: number[] = [];
    for (let i = 0; i < OPENERS; i++) {
      const r = spawnSync(process.execPath, ['-e', OPENER, meta], { encoding: 'utf8' });
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
      openers.push(r.pid!);
    }
    fs.writeFileSync(stop, '');
    expect({ ...(await exited), err }).toEqual({ code: 0, signal: null, err: '' });
    const { n, stale } = JSON.parse(out) as { n: number; stale: number };
    expect(stale).toBe(0);

    // Every commit of every process is there.
    const env = MetadataEnv.open(meta, { create: false });
    try {
      expect(env.table('count').get(1)?.readUInt32LE(0)).toBe(n);
      for (const pid of openers) expect(env.table('openers').has(pid)).toBe(true);
    } finally {
      await env.close();
    }
  }, 120_000);

  it('a commit waits for an open in another process, and fails with POOL_LOCKED (not a hang) when that process never lets go', async () => {
    const meta = path.join(dir, 'metadata');
    const env = MetadataEnv.open(meta, { create: true });
    env.txn(() => env.table('t').put(0, Buffer.from('made')));
    const lockFile = path.join(meta, ENV_OPEN_LOCK_FILE);
    // A process stopped half-way through its open: holds the exclusive lock until told to go.
    const go = path.join(dir, 'go');
    const holder = spawn(process.execPath, ['-e', `
      const fs = require('node:fs');
      const { loadFileLock } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist', 'native', 'index.js'))});
      const fd = fs.openSync(process.argv[1], 'r+');
      if (loadFileLock()(fd, 2) !== 0) process.exit(3);
      process.stdout.write('held\\n');
      const t = setInterval(() => { if (fs.existsSync(process.argv[2])) { clearInterval(t); process.exit(0); } }, 20);`, lockFile, go], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r) => holder.stdout.once('data', () => r()));
    const before = process.env.DMFS_OPEN_LOCK_WAIT_MS;
    process.env.DMFS_OPEN_LOCK_WAIT_MS = '300';
    try {
      const t0 = Date.now();
      expect(() => env.txn(() => env.table('t').put(1, Buffer.from('a')))).toThrow(expect.objectContaining({ code: 'POOL_LOCKED', message: expect.stringContaining('fuser -v') }));
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
      expect(env.table('t').get(1)).toBeUndefined();
      // Let go part-way through the next wait: the commit goes through.
      process.env.DMFS_OPEN_LOCK_WAIT_MS = '20000';
      setTimeout(() => fs.writeFileSync(go, ''), 0);
      const exited = new Promise((r) => holder.on('exit', r));
      await new Promise((r) => setTimeout(r, 200));
      await exited;
      env.txn(() => env.table('t').put(1, Buffer.from('b')));
      expect(env.table('t').get(1)?.toString()).toBe('b');
    } finally {
      if (before === undefined) delete process.env.DMFS_OPEN_LOCK_WAIT_MS;
      else process.env.DMFS_OPEN_LOCK_WAIT_MS = before;
      holder.kill();
      await env.close();
    }
  }, 60_000);
});
