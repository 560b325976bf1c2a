/**
 * The operations table over the real store (a pool in a temp directory): O_TMPFILE files,
 * birth times, access times and POSIX ACLs, without FUSE. The kernel's side (what it
 * enforces, what it sends) is covered by the differential tests in test/integration.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants, rmSync } from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { AccessTimes, relatimeNeedsUpdate } from '../../../src/fs/access-times';
import { createFuseOperations, NO_FEATURES, ROOT_NODE_ID, type CallerContext, type FuseOperations } from '../../../src/fs/fuse-operations';
import type { Attr, LayerFs } from '../../../src/store/layer-store';
import { S_IFDIR, S_IFREG } from '../../../src/store/layer-store';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';
import { tempPool } from '../../support/temp-pool';

const root: CallerContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
const ACCESS = 'system.posix_acl_access';
const DEFAULT = 'system.posix_acl_default';
/** user::rwx, user:1000:rwx, group::r-x, mask::rwx, other::--- */
const DEFAULT_ACL = Buffer.from('02000000' + '01000700ffffffff' + '02000700e8030000' + '04000500ffffffff' + '10000700ffffffff' + '20000000ffffffff', 'hex');
const DAY_NS = 24n * 3600n * 1_000_000_000n;

/** Runs `body` on a container layer of a fresh pool, then removes both. */
async function inContainer(body: (c: { pool: Pool; layer: LayerFs }) => Promise<void>): Promise<void> {
  const t = await tempPool({ sizeBytes: 256 * 1024 ** 2, options: ['dm.min_free_space=0'] });
  try {
    await t.pool.store.createLayer('c', { kind: 'container' });
    const layer = await t.pool.store.openLayer('c');
    try {
      await body({ pool: t.pool, layer });
    } finally {
      await layer.close();
    }
  } finally {
    await t.remove();
  }
}

/**
 * An image layer holding file /f (with `content`), sealed, and a container on it, opened:
 * `body` gets the container and the image file's attributes as created.
 */
async function inContainerOverImage(content: string, body: (c: LayerFs, imageFile: Attr) => Promise<void>): Promise<void> {
  const t = await tempPool({ sizeBytes: 256 * 1024 ** 2 });
  try {
    await t.pool.store.createLayer('img', { kind: 'image', building: true });
    const img = await t.pool.store.openLayer('img');
    const f = await img.mknod(img.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await img.write(f.ino, Buffer.from(content), 0);
    await img.close();
    await t.pool.store.sealLayer('img');
    await t.pool.store.createLayer('c', { parent: 'img', kind: 'container' });
    const c = await t.pool.store.openLayer('c');
    try {
      await body(c, f);
    } finally {
      await c.close();
    }
  } finally {
    await t.remove();
  }
}

function table(layer: LayerFs, opts: { posixAcl?: boolean; atime?: 'relatime' | 'strictatime' | 'noatime'; nowNs?: () => bigint } = {}): FuseOperations {
  const ops = createFuseOperations(layer, {
    blockSizeBytes: 65536, entryTimeoutS: 1, attrTimeoutS: 1, negativeTimeoutS: 1, keepCache: true, cacheDirs: true,
    writebackCache: false, ...opts,
  });
  ops.init({ ...NO_FEATURES, posixAcl: true });
  return ops;
}

describe('O_TMPFILE through the table', () => {
  it('an unnamed file is open with nlink 0, invisible, and freed (blocks too) at its last release', async () => {
    await inContainer(async ({ pool, layer }) => {
      const ops = table(layer);
      const before = (await pool.info()).dataSpaceUsedBytes;
      const t = await ops.tmpfile(root, ROOT_NODE_ID, 0o600, fsConstants.O_RDWR);
      expect(t.entry.attr).toMatchObject({ nlink: 0, kind: 'file', mode: S_IFREG | 0o600 });
      await ops.write(root, t.entry.nodeId, t.open.fh, Buffer.alloc(1 << 20, 7), 0, false);
      expect(await layer.readdir(layer.rootIno)).toEqual([]);
      expect((await pool.info()).dataSpaceUsedBytes).toBeGreaterThan(before);
      await ops.release(root, t.entry.nodeId, t.open.fh);
      await expect(layer.getattr(t.entry.nodeId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect((await pool.info()).dataSpaceUsedBytes).toBe(before);
    });
  });

  it('link() gives it a name that outlives the release, with its content', async () => {
    await inContainer(async ({ layer }) => {
      const ops = table(layer);
      const t = await ops.tmpfile(root, ROOT_NODE_ID, 0o644, fsConstants.O_RDWR);
      await ops.write(root, t.entry.nodeId, t.open.fh, Buffer.from('anonymous'), 0, false);
      const named = await ops.link(root, t.entry.nodeId, ROOT_NODE_ID, 'named');
      expect(named.attr?.nlink).toBe(1);
      await ops.release(root, t.entry.nodeId, t.open.fh);
      const a = await layer.lookup(layer.rootIno, 'named');
      const buf = Buffer.alloc(20);
      expect(buf.subarray(0, await layer.read(a!.ino, buf, 0)).toString()).toBe('anonymous');
      expect((await layer.getattr(a!.ino)).nlink).toBe(1);
    });
  });

  it('a process killed while holding one leaves nothing: the next open frees it and check is clean', async () => {
    ensureBuiltDist();
    const t = await tempPool({ sizeBytes: 256 * 1024 ** 2, options: ['dm.min_free_space=0'] });
    try {
      await t.pool.store.createLayer('c', { kind: 'container' });
      const before = (await t.pool.info()).dataSpaceUsedBytes;
      await t.pool.close();
      const script = [
        `const { Pool } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/api.js'))});`,
        '(async () => {',
        `  const pool = await Pool.open(${JSON.stringify(t.root)});`,
        "  const fs = await pool.store.openLayer('c');",
        `  const a = await fs.createUnnamed(fs.rootIno, { mode: ${S_IFREG | 0o600}, uid: 0, gid: 0 });`,
        '  await fs.write(a.ino, Buffer.alloc(4 << 20, 1), 0);',
        '  await fs.fsync();',
        "  process.stdout.write('ready\\n');",
        '  setInterval(() => undefined, 1000);',
        '})();',
      ].join('\n');
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        child.on('exit', (code) => reject(new Error(`writer exited (${code}) before it was ready`)));
      });
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const reopened = await Pool.open(t.root);
      try {
        expect((await reopened.check()).problems).toEqual([]);
        expect((await reopened.info()).dataSpaceUsedBytes).toBe(before);
      } finally {
        await reopened.close();
      }
    } finally {
      rmSync(t.root, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('birth time', () => {
  it('is set at creation, stays through writes and chmod, and a container copy keeps the lower one', async () => {
    await inContainerOverImage('', async (c, f) => {
      expect(f.btimeNs).toBe(f.ctimeNs);
      await new Promise((r) => setTimeout(r, 5));
      await c.write(f.ino, Buffer.from('copied up'), 0);
      await c.setattr(f.ino, { mode: 0o600 });
      const after = await c.getattr(f.ino);
      expect(after.btimeNs).toBe(f.btimeNs);
      expect(after.ctimeNs > f.ctimeNs).toBe(true);
    });
  });
});

describe('access times', () => {
  it('relatime: when atime is not newer than mtime or ctime, or a day old', () => {
    const now = 10n * DAY_NS;
    expect(relatimeNeedsUpdate(5n, 5n, 1n, now)).toBe(true);
    expect(relatimeNeedsUpdate(5n, 1n, 5n, now)).toBe(true);
    expect(relatimeNeedsUpdate(now - DAY_NS + 1n, 1n, 1n, now)).toBe(false);
    expect(relatimeNeedsUpdate(now - DAY_NS, 1n, 1n, now)).toBe(true);
  });

  it('a read after a write moves atime (not ctime); re-reads write nothing and read no metadata', async () => {
    await inContainer(async ({ layer }) => {
      const ops = table(layer);
      const c = await ops.create(root, ROOT_NODE_ID, 'f', 0o644, fsConstants.O_RDWR);
      const node = c.entry.nodeId;
      await ops.write(root, node, c.open.fh, Buffer.from('data'), 0, false);
      await layer.setattr(node, { atimeNs: 1000n });
      const before = await layer.getattr(node);
      await ops.read(root, node, c.open.fh, Buffer.alloc(10), 0);
      const after = await layer.getattr(node);
      expect(after.atimeNs > before.mtimeNs).toBe(true);
      expect(after.ctimeNs).toBe(before.ctimeNs);
      // Re-reads: no getattr, no setattr.
      const getattr = jest.spyOn(layer, 'getattr');
      const setattr = jest.spyOn(layer, 'setattr');
      for (let i = 0; i < 5; i++) await ops.read(root, node, c.open.fh, Buffer.alloc(10), 0);
      expect(getattr).not.toHaveBeenCalled();
      expect(setattr).not.toHaveBeenCalled();
      // A write makes the next read move atime again.
      await new Promise((r) => setTimeout(r, 2));
      await ops.write(root, node, c.open.fh, Buffer.from('more'), 4, false);
      await ops.read(root, node, c.open.fh, Buffer.alloc(10), 0);
      expect(setattr).toHaveBeenCalledTimes(1);
      expect((await layer.getattr(node)).atimeNs > (await layer.getattr(node)).mtimeNs).toBe(true);
    });
  });

  it('a read of a file the container has from its image is no change of the container', async () => {
    await inContainerOverImage('from the image', async (c, f) => {
      const ops = table(c, { atime: 'strictatime' });
      const h = await ops.open(root, f.ino, fsConstants.O_RDONLY);
      await ops.read(root, f.ino, h.fh, Buffer.alloc(20), 0);
      await ops.release(root, f.ino, h.fh);
      const changes = [];
      for await (const ch of c.changes()) changes.push(ch.path);
      expect(changes).toEqual([]);
      expect((await c.getattr(f.ino)).atimeNs).toBe(f.atimeNs);
      // Asked once: later reads of it cost no metadata access.
      const getattr = jest.spyOn(c, 'getattr');
      await ops.read(root, f.ino, h.fh, Buffer.alloc(20), 0);
      expect(getattr).not.toHaveBeenCalled();
    });
  });

  it('strictatime writes atime on every read; noatime never; a read-only layer never', async () => {
    await inContainer(async ({ layer }) => {
      const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      const strict = new AccessTimes(layer, 'strictatime', () => 5n * DAY_NS);
      await strict.accessed(f.ino);
      const first = (await layer.getattr(f.ino)).atimeNs;
      expect(first > f.ctimeNs).toBe(true);
      await strict.accessed(f.ino);
      const second = await layer.getattr(f.ino);
      expect(second.atimeNs > first).toBe(true);
      expect(second.ctimeNs).toBe(f.ctimeNs);
      expect(new AccessTimes(layer, 'noatime', () => 5n * DAY_NS).accessed(f.ino)).toBeUndefined();
      expect(new AccessTimes({ ...layer, readOnly: true } as LayerFs, 'strictatime', () => 5n * DAY_NS).mode).toBe('noatime');
    });
  });

  it('listing a directory changed since it was last read moves its atime', async () => {
    await inContainer(async ({ layer }) => {
      const ops = table(layer);
      const d = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
      await layer.setattr(d.nodeId, { atimeNs: 1000n });
      const fh = ops.opendir(root, d.nodeId, 0).fh;
      await ops.readdir(root, d.nodeId, fh, 0, false);
      expect((await layer.getattr(d.nodeId)).atimeNs > 1000n).toBe(true);
    });
  });
});

describe('POSIX ACLs through the table', () => {
  it('new nodes inherit a default ACL (no umask), directories keep it; elsewhere the umask applies', async () => {
    await inContainer(async ({ layer }) => {
      const ops = table(layer, { posixAcl: true });
      const d = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
      await ops.setxattr(root, d.nodeId, DEFAULT, DEFAULT_ACL, 0);
      const strict: CallerContext = { ...root, umask: 0o077 };
      const f = await ops.create(strict, d.nodeId, 'f', 0o666, fsConstants.O_RDWR);
      expect(f.entry.attr!.mode).toBe(S_IFREG | 0o660);
      const access = await layer.getxattr(f.entry.nodeId, ACCESS);
      expect(access?.toString('hex')).toBe('02000000' + '01000600ffffffff' + '02000700e8030000' + '04000500ffffffff' + '10000600ffffffff' + '20000000ffffffff');
      expect(await layer.getxattr(f.entry.nodeId, DEFAULT)).toBeNull();
      const sub = await ops.mkdir(strict, d.nodeId, 'sub', 0o777);
      expect(sub.attr!.mode).toBe(S_IFDIR | 0o770);
      expect(await layer.getxattr(sub.nodeId, DEFAULT)).toEqual(DEFAULT_ACL);
      const plain = await ops.create(strict, ROOT_NODE_ID, 'plain', 0o666, fsConstants.O_RDWR);
      expect(plain.entry.attr!.mode).toBe(S_IFREG | 0o600);
      expect(await layer.listxattr(plain.entry.nodeId)).toEqual([]);
    });
  });

  it('chmod rewrites the access ACL\'s owner, mask and other entries', async () => {
    await inContainer(async ({ layer }) => {
      const ops = table(layer, { posixAcl: true });
      const d = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
      await ops.setxattr(root, d.nodeId, ACCESS, DEFAULT_ACL, 0);
      expect((await layer.getattr(d.nodeId)).mode & 0o7777).toBe(0o770);
      await ops.setattr(root, d.nodeId, { mode: 0o751 });
      expect((await layer.getxattr(d.nodeId, ACCESS))?.toString('hex')).toBe(
        '02000000' + '01000700ffffffff' + '02000700e8030000' + '04000500ffffffff' + '10000500ffffffff' + '20000100ffffffff');
      await ops.removexattr(root, d.nodeId, ACCESS);
      await ops.removexattr(root, d.nodeId, ACCESS);
      expect(await layer.getxattr(d.nodeId, ACCESS)).toBeNull();
    });
  });

  it('where the kernel does not enforce them, setting one is refused and nothing is stored', async () => {
    await inContainer(async ({ layer }) => {
      const ops = createFuseOperations(layer, {
        blockSizeBytes: 65536, entryTimeoutS: 1, attrTimeoutS: 1, negativeTimeoutS: 1, keepCache: true, cacheDirs: true, writebackCache: false,
      });
      ops.init({ ...NO_FEATURES, posixAcl: true });
      const d = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
      await expect(ops.setxattr(root, d.nodeId, DEFAULT, DEFAULT_ACL, 0)).rejects.toMatchObject({ code: 'NOT_SUPPORTED' });
      expect(await layer.listxattr(d.nodeId)).toEqual([]);
      await ops.removexattr(root, d.nodeId, ACCESS);
    });
  });

  it('the store refuses a malformed ACL value', async () => {
    await inContainer(async ({ layer }) => {
      await expect(layer.setxattr(layer.rootIno, ACCESS, Buffer.from('0200000001', 'hex'))).rejects.toMatchObject({ code: 'INVALID' });
    });
  });
});
