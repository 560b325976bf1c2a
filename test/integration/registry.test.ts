/**
 * `dmfs pull` / `dmfs push` against a real registry: Debian's docker-registry
 * (distribution 2.8) started here on 127.0.0.1 with configs of its own
 * (test/support/registry-harness.ts):
 * - plain HTTP, behind a proxy that counts requests, cuts a blob download half-way (the
 *   pull resumes with Range) or flips a byte (refused; `dmfs ls` and `dmfs check` as
 *   before). skopeo seeds an image and inspects what dmfs pushed;
 * - TLS with a CA made here (openssl) and basic auth (a bcrypt htpasswd): an untrusted
 *   CA, missing and wrong credentials give the clear errors; the CA in
 *   /etc/docker/certs.d/HOST:PORT/ and credentials from $REGISTRY_AUTH_FILE or
 *   ~/.docker/config.json ($DOCKER_CONFIG) work;
 * - token auth: a token server here issues the JWTs the registry verifies.
 *
 * Needs root (for /etc/docker/certs.d), docker-registry, skopeo, htpasswd (apache2-utils)
 * and openssl, which `node scripts/setup.js` installs; under CI=true nothing skips.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { LABELS } from '../../src/image/importer';
import { parseCredsOption } from '../../src/image/registry-credentials';
import {
  FaultProxy, haveCommand, makeHtpasswd, makeTlsFiles, REGISTRY_BIN, sha256Of, startRegistry, TokenServer,
  type RunningRegistry, type TlsFiles,
} from '../support/registry-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';
import { buildOci, dir, file, hardlink, symlink, whiteout, opaque, type LayerSpec } from '../unit/image/helpers/image-builder';

const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;
const MISSING = [
  ...(fs.existsSync(REGISTRY_BIN) ? [] : ['docker-registry']),
  ...(haveCommand('skopeo') ? [] : ['skopeo']),
  ...(haveCommand('htpasswd', ['-h']) || fs.existsSync('/usr/bin/htpasswd') ? [] : ['apache2-utils']),
  ...(haveCommand('openssl', ['version']) ? [] : ['openssl']),
];
const READY = IS_ROOT && MISSING.length === 0;
if (!READY && process.env.CI !== 'true') {
  // eslint-disable-next-line no-console
  console.warn(`registry: skipping (${!IS_ROOT ? 'not root; ' : ''}${MISSING.length ? `missing ${MISSING.join(', ')}: run node scripts/setup.js as root` : ''})`);
}
const maybe = READY || process.env.CI === 'true' ? describe : describe.skip;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-registry-'));
let poolCount = 0;
/** The seed image: an OCI layout with three layers (gzip, zstd, plain). */
const layout = path.join(work, 'seed-layout');
let seeded: { blobDigests: string[]; manifestDigest: string; diffIds: string[] };
if (READY || process.env.CI === 'true') {
  beforeAll(async () => {
    seeded = await buildOci(layout, imageLayers(), { ref: 'v1' });
  });
}

/**
 * The CLI in a child process, asynchronously: the proxy and the token server answer from
 * this process, so its event loop must keep running (spawnSync would stall them).
 */
function cli(root: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  ensureBuiltDist();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DMFS_BIN, ...args, '--root', root], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

async function ok(root: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await cli(root, args, env);
  if (r.code !== 0) throw new Error(`dmfs ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function json<T = Record<string, unknown>>(root: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  return JSON.parse(await ok(root, [...args, '--json'], env)) as T;
}

/** Runs a command expected to fail; its exit code, error code (from --json) and stderr. */
async function fails(root: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; error: string; stderr: string }> {
  const r = await cli(root, [...args, '--json'], env);
  const doc = r.stdout.trim() ? (JSON.parse(r.stdout) as { error?: { code: string } }) : {};
  return { code: r.code, error: doc.error?.code ?? '(none)', stderr: r.stderr };
}

/** A fresh pool (CLI `pool create`), its root. */
async function newPool(): Promise<string> {
  const root = path.join(work, `pool-${++poolCount}`);
  await ok(root, ['pool', 'create', '--size', '2G']);
  return root;
}

/**
 * The flattened tree of an image, as `dmfs export --full` writes it (deterministic), as
 * a `tar -tv` listing with a digest of the whole archive: a mismatch shows where.
 */
async function fullTree(root: string, image: string): Promise<string> {
  const out = path.join(work, `tree-${Date.now()}-${Math.random().toString(36).slice(2)}.tar`);
  await ok(root, ['export', image, '--full', '-o', out]);
  const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', out], { encoding: 'utf8' });
  const digest = sha256Of(fs.readFileSync(out));
  fs.rmSync(out);
  return `${listing}${digest}\n`;
}

function skopeoInspect(ref: string, extra: string[] = []): { Digest: string; Layers: string[] } {
  return JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', ...extra, `docker://${ref}`], { encoding: 'utf8' }));
}

/** Incompressible bytes (xorshift): gzip blobs as big as their content. */
function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function imageLayers(): LayerSpec[] {
  return [
    {
      entries: [
        // Every directory has an entry: one created implicitly takes the time of the import.
        dir('./'), dir('etc'), file('etc/os-release', 'ID=dmfs-registry-test\n'), symlink('etc/localtime', '/usr/share/zoneinfo/UTC'),
        dir('usr'), dir('usr/lib'), file('usr/lib/big.so', noise(6 * 1024 * 1024, 7)), file('usr/lib/a', 'a\n'), hardlink('usr/lib/b', 'usr/lib/a'),
        dir('opq'), file('opq/lower', 'l'), dir('gone'), file('gone/x', 'x'),
      ],
    },
    { compression: 'zstd', entries: [whiteout('gone'), opaque('opq'), file('opq/upper', 'u'), file('usr/lib/big.so', noise(2 * 1024 * 1024, 9))] },
    { compression: 'none', entries: [file('app', '#!/bin/sh\necho app\n', { mode: 0o755 })] },
  ];
}

maybe('registry over plain HTTP (behind a fault proxy)', () => {
  let registry: RunningRegistry;
  let proxy: FaultProxy;
  let host: string;

  beforeAll(async () => {
    registry = await startRegistry(path.join(work, 'plain'));
    proxy = new FaultProxy(registry.port);
    await proxy.start();
    host = proxy.host;
    execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${registry.host}/seed/app:v1`]);
  });
  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
  });

  test('pull: the tree of the image, the digests skopeo sees, nothing fetched twice', async () => {
    const root = await newPool();
    const r = await json<{ name: string; manifestDigest: string; blobsFetched: number; layers: { name: string; diffId: string }[] }>(root, ['pull', `${host}/seed/app:v1`, '--plain-http']);
    expect(r.name).toBe(`${host}/seed/app:v1`);
    expect(r.blobsFetched).toBe(3);
    // skopeo compressed the plain layer on the way in: the registry's digests are skopeo's, the diff ids the layout's.
    const inspect = skopeoInspect(`${registry.host}/seed/app:v1`);
    expect(r.manifestDigest).toBe(inspect.Digest);
    expect(r.layers.map((l) => l.diffId)).toEqual(seeded.diffIds);
    const labels: Record<string, string>[] = [];
    for (const l of r.layers) labels.push((await json<{ labels: Record<string, string> }>(root, ['inspect', l.name])).labels);
    expect(labels.map((l) => l[LABELS.blobDigest])).toEqual(inspect.Layers);

    const local = await newPool();
    await ok(local, ['import', `${layout}:v1`, '--name', 'local']);
    expect(await fullTree(root, r.name)).toBe(await fullTree(local, 'local'));

    const before = proxy.blobGets().length;
    const again = await json<{ blobsFetched: number; bytesDownloaded: number; alreadyPresent: boolean }>(root, ['pull', `${host}/seed/app:v1`, '--plain-http']);
    expect(again).toMatchObject({ blobsFetched: 0, bytesDownloaded: 0, alreadyPresent: true });
    for (const d of inspect.Layers) expect(proxy.blobGets(d)).toHaveLength(1);
    expect(proxy.blobGets().length - before).toBe(1); // the config
  });

  test('push a dmfs image; skopeo reads it; pulled into a fresh pool it is the same tree; a second push uploads no blob', async () => {
    const src = await newPool();
    await ok(src, ['import', `${layout}:v1`, '--name', 'mine']);
    const pushed = await json<{ manifestDigest: string; blobsUploaded: number; layers: { action: string; digest: string }[] }>(src, ['push', 'mine', `${host}/dmfs/mine:1.0`, '--plain-http']);
    expect(pushed.layers.map((l) => l.action)).toEqual(['uploaded', 'uploaded', 'uploaded']);
    expect(pushed.blobsUploaded).toBe(4);
    const inspect = skopeoInspect(`${registry.host}/dmfs/mine:1.0`);
    expect(inspect.Digest).toBe(pushed.manifestDigest);
    expect(inspect.Layers).toEqual(pushed.layers.map((l) => l.digest));
    // skopeo copies it back out: the registry holds a valid image.
    execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${registry.host}/dmfs/mine:1.0`, `oci:${path.join(work, 'copied')}:x`]);

    const dst = await newPool();
    const pulled = await json<{ name: string; manifestDigest: string }>(dst, ['pull', `${host}/dmfs/mine:1.0`, '--plain-http', '--name', 'mine-again']);
    expect(pulled.manifestDigest).toBe(pushed.manifestDigest);
    expect(await fullTree(dst, 'mine-again')).toBe(await fullTree(src, 'mine'));

    const patches = proxy.requests.filter((q) => q.method === 'PATCH' || q.method === 'PUT').length;
    const second = await json<{ manifestDigest: string; blobsUploaded: number; bytesUploaded: number; layers: { action: string }[] }>(src, ['push', 'mine', `${host}/dmfs/mine:1.0`, '--plain-http']);
    expect(second).toMatchObject({ manifestDigest: pushed.manifestDigest, blobsUploaded: 0, bytesUploaded: 0 });
    expect(second.layers.map((l) => l.action)).toEqual(['exists', 'exists', 'exists']);
    expect(proxy.requests.filter((q) => q.method === 'PATCH' || q.method === 'PUT').length - patches).toBe(1); // the manifest
  });

  test('push of a pulled image to another repository mounts its blobs', async () => {
    const root = await newPool();
    await ok(root, ['pull', `${host}/seed/app:v1`, '--plain-http', '--name', 'seed']);
    const r = await json<{ layers: { action: string; digest: string }[]; bytesUploaded: number }>(root, ['push', 'seed', `${host}/elsewhere/app:v1`, '--plain-http']);
    expect(r.layers.map((l) => l.action)).toEqual(['mounted', 'mounted', 'mounted']);
    const seed = skopeoInspect(`${registry.host}/seed/app:v1`).Layers;
    expect(r.layers.map((l) => l.digest)).toEqual(seed);
    expect(skopeoInspect(`${registry.host}/elsewhere/app:v1`).Layers).toEqual(seed);
  });

  test('a connection cut half-way through a blob resumes with a Range request', async () => {
    const root = await newPool();
    proxy.cutBlob = { digest: seeded.blobDigests[0], afterBytes: 3 * 1024 * 1024 };
    const r = await json<{ name: string; resumes: number }>(root, ['pull', `${host}/seed/app:v1`, '--plain-http']);
    expect(r.resumes).toBe(1);
    expect(proxy.blobGets(seeded.blobDigests[0]).map((g) => g.range).slice(-2)).toEqual([null, expect.stringMatching(/^bytes=\d+-$/)]);
    const local = await newPool();
    await ok(local, ['import', `${layout}:v1`, '--name', 'local']);
    expect(await fullTree(root, r.name)).toBe(await fullTree(local, 'local'));
  });

  test('a flipped byte fails the pull and leaves the pool as it was', async () => {
    const root = await newPool();
    const rootfs = path.join(work, 'other-rootfs');
    fs.mkdirSync(path.join(rootfs, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(rootfs, 'etc', 'other'), 'other\n');
    await ok(root, ['import', rootfs, '--name', 'other']);
    const ls = await ok(root, ['ls', '--json']);
    const check = await json<{ ok: boolean; problems: unknown[]; stats: unknown }>(root, ['check']);
    proxy.flipBlob = { digest: seeded.blobDigests[1], atByte: 1_000_000 };
    try {
      const f = await fails(root, ['pull', `${host}/seed/app:v1`, '--plain-http', '--name', 'corrupt']);
      expect(f).toMatchObject({ code: 1, error: 'BAD_IMAGE' });
    } finally {
      proxy.flipBlob = null;
    }
    expect(await ok(root, ['ls', '--json'])).toBe(ls);
    const after = await json<{ ok: boolean; problems: unknown[]; stats: unknown }>(root, ['check']);
    expect({ ok: after.ok, problems: after.problems, stats: after.stats }).toEqual({ ok: check.ok, problems: check.problems, stats: check.stats });
    expect(after.ok).toBe(true);
  });

  test('an unknown tag lists the tags the registry has; bad references are usage errors', async () => {
    const root = await newPool();
    const f = await fails(root, ['pull', `${host}/seed/app:nope`, '--plain-http']);
    expect(f).toMatchObject({ code: 1, error: 'NOT_FOUND' });
    expect(f.stderr).toMatch(/has no tag nope; it has: v1/);
    expect(await fails(root, ['pull', 'http://x/y', '--plain-http'])).toMatchObject({ code: 2, error: 'USAGE' });
    const tls = await fails(root, ['pull', `${host}/seed/app:v1`]);
    expect(tls).toMatchObject({ code: 1, error: 'REGISTRY_TLS' });
    expect(tls.stderr).toMatch(/--plain-http/);
  });
});

maybe('registry with TLS and basic auth', () => {
  let registry: RunningRegistry;
  let tlsFiles: TlsFiles;
  let certsDir: string;
  const user = 'alice';
  const password = 'pass:with:colons';

  beforeAll(async () => {
    const d = path.join(work, 'tls');
    tlsFiles = makeTlsFiles(path.join(d, 'certs'));
    registry = await startRegistry(d, { tls: tlsFiles, htpasswd: makeHtpasswd(path.join(d, 'htpasswd'), user, password) });
    certsDir = path.join('/etc/docker/certs.d', registry.host);
  });
  afterAll(async () => {
    fs.rmSync(certsDir, { recursive: true, force: true });
    await registry?.stop();
  });

  test('an untrusted CA names the certs.d directories; no or wrong credentials name the registry and --creds', async () => {
    const root = await newPool();
    await ok(root, ['import', `${layout}:v1`, '--name', 'img']);
    const env = { HOME: path.join(work, 'no-home'), REGISTRY_AUTH_FILE: path.join(work, 'no-auth.json'), DOCKER_CONFIG: path.join(work, 'no-docker') };
    const untrusted = await fails(root, ['push', 'img', `${registry.host}/t/img:v1`, '--creds', `${user}:${password}`], env);
    expect(untrusted).toMatchObject({ code: 1, error: 'REGISTRY_TLS' });
    expect(untrusted.stderr).toContain(`/etc/docker/certs.d/${registry.host}/ca.crt`);

    fs.mkdirSync(certsDir, { recursive: true });
    fs.copyFileSync(tlsFiles.caCert, path.join(certsDir, 'ca.crt'));
    const anonymous = await fails(root, ['push', 'img', `${registry.host}/t/img:v1`], env);
    expect(anonymous).toMatchObject({ code: 1, error: 'REGISTRY_AUTH' });
    expect(anonymous.stderr).toMatch(new RegExp(`registry ${registry.host} refused .*--creds USER:PASSWORD`));
    const wrong = await fails(root, ['pull', `${registry.host}/t/img:v1`, '--creds', `${user}:nope`], env);
    expect(wrong).toMatchObject({ code: 1, error: 'REGISTRY_AUTH' });
    expect(wrong.stderr).toMatch(/credentials from --creds were refused/);
  });

  test('push and pull with the CA in /etc/docker/certs.d and credentials from the auth files', async () => {
    fs.mkdirSync(certsDir, { recursive: true });
    fs.copyFileSync(tlsFiles.caCert, path.join(certsDir, 'ca.crt'));
    const auth = { auths: { [registry.host]: { auth: Buffer.from(`${user}:${password}`).toString('base64') } } };
    const authFile = path.join(work, 'containers-auth.json');
    fs.writeFileSync(authFile, JSON.stringify(auth));
    const dockerDir = path.join(work, 'docker-config');
    fs.mkdirSync(dockerDir, { recursive: true });
    fs.writeFileSync(path.join(dockerDir, 'config.json'), JSON.stringify(auth));

    const src = await newPool();
    await ok(src, ['import', `${layout}:v1`, '--name', 'img']);
    const pushed = await json<{ manifestDigest: string }>(src, ['push', 'img', `${registry.host}/t/img:v1`], { REGISTRY_AUTH_FILE: authFile, DOCKER_CONFIG: path.join(work, 'no-docker') });
    expect(skopeoInspect(`${registry.host}/t/img:v1`, ['--creds', `${user}:${password}`]).Digest).toBe(pushed.manifestDigest);
    const dst = await newPool();
    const pulled = await json<{ name: string; manifestDigest: string }>(dst, ['pull', `${registry.host}/t/img:v1`], { REGISTRY_AUTH_FILE: path.join(work, 'none.json'), DOCKER_CONFIG: dockerDir });
    expect(pulled.manifestDigest).toBe(pushed.manifestDigest);
    expect(await fullTree(dst, pulled.name)).toBe(await fullTree(src, 'img'));
  });

  test('the Node API takes certificate directories and credentials', async () => {
    const caRoot = path.join(work, 'api-certs');
    fs.mkdirSync(path.join(caRoot, registry.host), { recursive: true });
    fs.copyFileSync(tlsFiles.caCert, path.join(caRoot, registry.host, 'ca.crt'));
    const root = await newPool();
    const pool = await Pool.open(root);
    try {
      const r = await pool.pull(`${registry.host}/t/img:v1`, { certsDirs: [caRoot], credentials: parseCredsOption(`${user}:${password}`), name: 'api' });
      expect(r.blobsFetched).toBe(3);
      const again = await pool.push('api', `${registry.host}/t/img:v2`, { certsDirs: [caRoot], credentials: parseCredsOption(`${user}:${password}`) });
      expect(again.layers.map((l) => l.action)).toEqual(['exists', 'exists', 'exists']);
    } finally {
      await pool.close();
    }
  });
});

maybe('registry with token auth', () => {
  let registry: RunningRegistry;
  let tokens: TokenServer;

  beforeAll(async () => {
    const d = path.join(work, 'token');
    tokens = new TokenServer(path.join(d, 'signing'), 'carol', 'tok3n');
    await tokens.start();
    registry = await startRegistry(d, { token: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certFile } });
  });
  afterAll(async () => {
    await registry?.stop();
    await tokens?.stop();
  });

  test('push and pull with Bearer tokens from the token server; wrong credentials name it', async () => {
    const src = await newPool();
    await ok(src, ['import', `${layout}:v1`, '--name', 'img']);
    const pushed = await json<{ manifestDigest: string; layers: { action: string }[] }>(src, ['push', 'img', `${registry.host}/team/img:v1`, '--plain-http', '--creds', 'carol:tok3n']);
    expect(pushed.layers.map((l) => l.action)).toEqual(['uploaded', 'uploaded', 'uploaded']);
    expect(tokens.requests).toBeGreaterThan(0);
    const dst = await newPool();
    const pulled = await json<{ name: string; manifestDigest: string }>(dst, ['pull', `${registry.host}/team/img:v1`, '--plain-http', '--creds', 'carol:tok3n']);
    expect(pulled.manifestDigest).toBe(pushed.manifestDigest);
    expect(await fullTree(dst, pulled.name)).toBe(await fullTree(src, 'img'));
    // A pulled image pushed to another repository: mounted, with a token for both repositories.
    const moved = await json<{ layers: { action: string }[] }>(dst, ['push', pulled.name, `${registry.host}/other/img:v1`, '--plain-http', '--creds', 'carol:tok3n']);
    expect(moved.layers.map((l) => l.action)).toEqual(['mounted', 'mounted', 'mounted']);

    const wrong = await fails(dst, ['pull', `${registry.host}/team/img:v1`, '--plain-http', '--creds', 'carol:bad', '--name', 'x']);
    expect(wrong).toMatchObject({ code: 1, error: 'REGISTRY_AUTH' });
    expect(wrong.stderr).toMatch(new RegExp(`token server http://127.0.0.1:${tokens.port}/token refused the credentials from --creds`));
  });
});

afterAll(() => {
  fs.rmSync(work, { recursive: true, force: true });
});
