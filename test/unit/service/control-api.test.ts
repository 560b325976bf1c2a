/**
 * The daemon's control API without FUSE: a PoolDaemon in this process on a temp pool,
 * driven through DaemonClient and raw HTTP on its socket (routes, versioning, error codes,
 * hosted services, one daemon per pool, socket mode).
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { isDmfsError } from '../../../src/errors';
import { DaemonClient } from '../../../src/service/control-client';
import { CONTROL_API_VERSION, daemonRunPaths } from '../../../src/service/control-protocol';
import type { HostedService, ServiceContext } from '../../../src/service/hosted-services';
import { PoolDaemon } from '../../../src/service/pool-daemon';

function raw(socketPath: string, method: string, route: string, body?: string): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path: route }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString('utf8')) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A service that counts layers of the daemon's pool when asked: proves it got the opened pool. */
class LayerCounter implements HostedService {
  readonly name = 'layer-counter';
  started = 0;
  stopped = 0;
  private ctx: ServiceContext | null = null;
  async start(ctx: ServiceContext) {
    this.ctx = ctx;
    this.started++;
  }
  async stop() {
    this.ctx = null;
    this.stopped++;
  }
  detail() {
    return { root: this.ctx?.pool.root ?? null };
  }
}

describe('pool daemon control API (v1)', () => {
  let root: string;
  let daemon: PoolDaemon;
  let client: DaemonClient;
  const service = new LayerCounter();
  const lines: string[] = [];

  beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-daemon-api-'));
    await (await Pool.create({ root, sizeBytes: 1 << 30 })).close();
    daemon = await PoolDaemon.start(root, { log: (l) => lines.push(l), services: [service] });
    client = (await DaemonClient.connect(root))!;
  });

  afterAll(async () => {
    await client?.close();
    await daemon?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('listens on POOL/run/dmfs.sock, mode 0600, and says its version', async () => {
    const { socket } = daemonRunPaths(root);
    expect(fs.statSync(socket).isSocket()).toBe(true);
    expect(fs.statSync(socket).mode & 0o777).toBe(0o600);
    expect((await raw(socket, 'GET', '/version')).json).toEqual({ api: CONTROL_API_VERSION, dmfs: expect.any(String) });
    const s = await client.status();
    expect(s).toMatchObject({ api: 1, pid: process.pid, root, mounts: [], services: [{ name: 'layer-counter', state: 'stopped' }] });
    expect(s.rssBytes).toBeGreaterThan(1 << 20);
  });

  it('creates and lists layers in the daemon\'s pool, seen at once by a direct open', async () => {
    const info = await client.createLayer({ name: 'c1', labels: { team: 'a' } });
    expect(info).toMatchObject({ name: 'c1', kind: 'container', parent: 'base', labels: { team: 'a' } });
    expect((await client.listLayers()).map((l) => l.name)).toEqual(['base', 'c1']);
    const direct = await Pool.open(root);
    try {
      expect((await direct.store.listLayers()).map((l) => l.name)).toContain('c1');
    } finally {
      await direct.close();
    }
  });

  it('answers bad requests with stable error codes, never a crash', async () => {
    const { socket } = daemonRunPaths(root);
    const codeOf = async (p: Promise<unknown>) => p.then(() => 'no error', (e) => (isDmfsError(e) ? e.code : String(e)));
    expect(await codeOf(client.createLayer({ name: 'c1' }))).toBe('LAYER_EXISTS');
    expect(await codeOf(client.createLayer({ name: 'x', parent: 'nope' }))).toBe('LAYER_NOT_FOUND');
    expect(await codeOf(client.createLayer({ name: '' }))).toBe('USAGE');
    expect(await codeOf(client.mount({ layer: 'c1', mountpoint: 'relative/dir' }))).toBe('USAGE');
    expect(await codeOf(client.mount({ layer: 'missing', mountpoint: path.join(os.tmpdir(), 'dmfs-never-mounted') }))).toBe('LAYER_NOT_FOUND');
    expect(await codeOf(client.mount({ layer: 'c1', mountpoint: path.join(root, 'inside') }))).toBe('PATH_IN_POOL');
    expect(await codeOf(client.unmount({ mountpoint: '/not/served/here' }))).toBe('NOT_MOUNTED');
    const badJson = await raw(socket, 'POST', '/v1/layers', '{not json');
    expect(badJson).toMatchObject({ status: 400, json: { error: { code: 'USAGE' } } });
    const unknown = await raw(socket, 'GET', '/v2/status');
    expect(unknown).toMatchObject({ status: 404, json: { error: { code: 'NOT_FOUND' } } });
    const wrongMethod = await raw(socket, 'GET', '/v1/mounts');
    expect(wrongMethod).toMatchObject({ status: 400, json: { error: { code: 'USAGE' } } });
    expect((await client.listLayers()).length).toBe(2); // still serving
  });

  it('hosts services on its opened pool: start, status, stop by name', async () => {
    expect(await client.startService('layer-counter')).toMatchObject({ state: 'running', detail: { root } });
    expect(await client.startService('layer-counter')).toMatchObject({ state: 'running' }); // idempotent
    expect(service.started).toBe(1);
    expect((await client.status()).services).toEqual([expect.objectContaining({ name: 'layer-counter', state: 'running' })]);
    expect(await client.stopService('layer-counter')).toMatchObject({ state: 'stopped' });
    expect(service.stopped).toBe(1);
    await expect(client.startService('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('one daemon per pool: a second one is refused with POOL_LOCKED', async () => {
    await expect(PoolDaemon.start(root, { log: () => undefined })).rejects.toMatchObject({ code: 'POOL_LOCKED' });
    expect((await client.status()).pid).toBe(process.pid);
  });

  it('Pool.connect goes through the daemon while it runs', async () => {
    const c = await Pool.connect(root);
    try {
      expect(c.viaDaemon).toBe(true);
      expect((await c.listLayers()).map((l) => l.name)).toContain('c1');
    } finally {
      await c.close();
    }
  });

  it('stops over the socket: the socket goes, and the pool opens directly again', async () => {
    await client.startService('layer-counter');
    expect((await client.stop()).stopping).toBe(true);
    await daemon.stopped;
    expect(service.stopped).toBe(2); // hosted services stop before the pool closes
    expect(fs.existsSync(daemonRunPaths(root).socket)).toBe(false);
    expect(await DaemonClient.connect(root)).toBeNull();
    const c = await Pool.connect(root);
    try {
      expect(c.viaDaemon).toBe(false);
      expect((await c.listLayers()).map((l) => l.name)).toEqual(['base', 'c1']);
    } finally {
      await c.close();
    }
  });

  it('a stale socket (its daemon died) means no daemon, and a new daemon replaces it', async () => {
    const { socket } = daemonRunPaths(root);
    // A process listening on the socket, killed with -9: the socket file stays, nobody answers.
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(fs.existsSync(socket)).toBe(true);
    expect(await DaemonClient.connect(root)).toBeNull();
    daemon = await PoolDaemon.start(root, { log: () => undefined });
    client = (await DaemonClient.connect(root))!;
    expect((await client.status()).pid).toBe(process.pid);
  });
});

/** A service whose start fails (a socket in use, ...): the daemon must serve on without it. */
class FailingService implements HostedService {
  readonly name = 'always-fails';
  async start(): Promise<void> {
    throw new Error('cannot start here');
  }
  async stop(): Promise<void> {}
}

describe('pool daemon: services started with it, and the mounts they may make', () => {
  let root: string;
  let daemon: PoolDaemon;
  const counter = new LayerCounter();
  let ctx: ServiceContext;

  beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-daemon-svc-'));
    await (await Pool.create({ root, sizeBytes: 1 << 30 })).close();
    const grab: HostedService = { name: 'grab-context', start: async (c) => void (ctx = c), stop: async () => undefined };
    daemon = await PoolDaemon.start(root, {
      log: () => undefined, services: [counter, new FailingService(), grab], startServices: ['layer-counter', 'always-fails', 'grab-context'],
    });
  });

  afterAll(async () => {
    await daemon?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('startServices start before the control socket answers; one that fails is shown failed and the daemon serves on', async () => {
    const client = (await DaemonClient.connect(root))!;
    try {
      const services = (await client.status()).services;
      expect(services.find((s) => s.name === 'layer-counter')).toMatchObject({ state: 'running', detail: { root } });
      expect(services.find((s) => s.name === 'always-fails')).toMatchObject({ state: 'failed', error: 'cannot start here' });
      expect(counter.started).toBe(1);
    } finally {
      await client.close();
    }
  });

  it("a service's mountpoint must lie in a 0700 directory of the pool, not in the pool's own directories nor outside (checked before anything mounts)", async () => {
    const refused = (mountpoint: string) => ctx.mounts.mount('base', mountpoint, { readOnly: true });
    await expect(refused(path.join(os.tmpdir(), 'dmfs-outside', 'x'))).rejects.toMatchObject({ code: 'PATH_IN_POOL' });
    await expect(refused(path.join(root, 'run', 'x'))).rejects.toMatchObject({ code: 'PATH_IN_POOL' });
    await expect(refused(path.join(root, 'metadata', 'x'))).rejects.toMatchObject({ code: 'PATH_IN_POOL' });
    await expect(refused(path.join(root, 'x'))).rejects.toMatchObject({ code: 'PATH_IN_POOL' });
    await expect(refused(root)).rejects.toMatchObject({ code: 'PATH_IN_POOL' });
    const open = path.join(root, 'open');
    fs.mkdirSync(open, { mode: 0o755 });
    fs.chmodSync(open, 0o755);
    await expect(refused(path.join(open, 'x'))).rejects.toMatchObject({ code: 'NOT_PERMITTED' });
    await expect(refused(path.join(root, 'absent', 'x'))).rejects.toMatchObject({ code: 'NOT_PERMITTED' });
    expect(fs.readdirSync(open)).toEqual([]);
    expect(daemon.host.served()).toEqual([]);
    // Unmounting what is not served is nothing to do.
    await expect(ctx.mounts.unmount(path.join(root, 'snapshots', '7'))).resolves.toBeUndefined();
  });
});
