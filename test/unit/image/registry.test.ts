/**
 * Registry pull and push against an in-memory fake registry (helpers/fake-registry.ts):
 * references, credentials files, challenges, Basic and Bearer auth, manifest lists and
 * platforms, skip-existing in both directions, cross-repository mounts, Range resume,
 * digest mismatches (pool unchanged), the errors' codes. The memory store and the real
 * pool both run the pull/push cases. The real registry: test/integration/registry.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LayerPrefetch } from '../../../src/image/layer-prefetch';
import { parseChallenge, MANIFEST_MEDIA_TYPES } from '../../../src/image/registry-client';
import { lookupCredentials, parseCredsOption } from '../../../src/image/registry-credentials';
import { pullImage } from '../../../src/image/registry-pull';
import { pushImage } from '../../../src/image/registry-push';
import { familiarName, parseRegistryRef } from '../../../src/image/registry-ref';
import { parsePlatform } from '../../../src/image/registry-source';
import { importImage, LABELS } from '../../../src/image/importer';
import { LayerProgress } from '../../../src/cli/progress';
import { pullLines } from '../../../src/cli/commands/pull';
import { FakeRegistry } from './helpers/fake-registry';
import { buildOci, dir, file, LayerSpec, readTree, storeFactories, TestStore, whiteout } from './helpers/image-builder';
import { codeOf, tmpdir } from './helpers/tar-helpers';

describe('references', () => {
  test.each([
    ['debian', 'docker.io', 'library/debian', 'latest', null],
    ['debian:bookworm', 'docker.io', 'library/debian', 'bookworm', null],
    ['user/app', 'docker.io', 'user/app', 'latest', null],
    ['docker.io/library/debian:12', 'docker.io', 'library/debian', '12', null],
    ['index.docker.io/user/app:1', 'docker.io', 'user/app', '1', null],
    ['localhost/app', 'localhost', 'app', 'latest', null],
    ['localhost:5000/a/b/c:v1.2_x', 'localhost:5000', 'a/b/c', 'v1.2_x', null],
    ['127.0.0.1:5000/test', '127.0.0.1:5000', 'test', 'latest', null],
    ['registry.example.com/team/app@sha256:' + 'a'.repeat(64), 'registry.example.com', 'team/app', null, 'sha256:' + 'a'.repeat(64)],
    ['ghcr.io/o/p:t@sha256:' + 'b'.repeat(64), 'ghcr.io', 'o/p', 't', 'sha256:' + 'b'.repeat(64)],
    ['[::1]:5000/x', '[::1]:5000', 'x', 'latest', null],
  ])('%s', (text, registry, repository, tag, digest) => {
    expect(parseRegistryRef(text)).toEqual({ registry, repository, tag, digest });
  });

  test.each(['', 'x/UPPER', 'http://host/x', 'a//b', 'repo:bad tag', 'x@sha256:123', 'host:5000/', 'a/-b', 'x:' + 't'.repeat(200)])('refuses %j', (text) => {
    expect(() => parseRegistryRef(text)).toThrow(expect.objectContaining({ code: 'USAGE' }));
  });

  test('familiar names leave out Docker Hub', () => {
    expect(familiarName(parseRegistryRef('debian'))).toBe('debian:latest');
    expect(familiarName(parseRegistryRef('docker.io/user/app:1'))).toBe('user/app:1');
    expect(familiarName(parseRegistryRef('127.0.0.1:5000/x:y'))).toBe('127.0.0.1:5000/x:y');
  });

  test('platforms', () => {
    expect(parsePlatform('linux/arm/v7')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(() => parsePlatform('amd64')).toThrow(expect.objectContaining({ code: 'USAGE' }));
  });
});

describe('credentials', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const write = (doc: unknown): string => {
    const d = tmpdir('dmfs-creds-');
    dirs.push(d);
    const f = path.join(d, 'auth.json');
    fs.writeFileSync(f, JSON.stringify(doc));
    return f;
  };
  const b64 = (s: string): string => Buffer.from(s).toString('base64');

  test('--creds wins, the password may hold colons', () => {
    expect(parseCredsOption('u:p:q')).toMatchObject({ username: 'u', password: 'p:q' });
    expect(() => parseCredsOption('nopass')).toThrow(expect.objectContaining({ code: 'USAGE' }));
    const got = lookupCredentials('h:1', 'r', parseCredsOption('a:b'), { REGISTRY_AUTH_FILE: '/nonexistent' });
    expect(got.credentials).toMatchObject({ username: 'a', password: 'b', origin: '--creds' });
  });

  test('containers auth.json: the longest namespace first; then docker config.json', () => {
    const auth = write({ auths: { 'h:1': { auth: b64('host:x') }, 'h:1/team': { auth: b64('team:y') } } });
    const env = { REGISTRY_AUTH_FILE: auth, HOME: '/nonexistent' };
    expect(lookupCredentials('h:1', 'team/app', null, env).credentials).toMatchObject({ username: 'team', password: 'y', origin: auth });
    expect(lookupCredentials('h:1', 'other/app', null, env).credentials).toMatchObject({ username: 'host' });
    const docker = write({ auths: { 'https://index.docker.io/v1/': { auth: b64('hub:z') } }, credHelpers: { 'other.io': 'pass' } });
    const env2 = { REGISTRY_AUTH_FILE: '/nonexistent/auth.json', DOCKER_CONFIG: path.dirname(docker), HOME: '/nonexistent' };
    fs.renameSync(docker, path.join(path.dirname(docker), 'config.json'));
    expect(lookupCredentials('docker.io', 'library/debian', null, env2).credentials).toMatchObject({ username: 'hub', password: 'z' });
    const none = lookupCredentials('other.io', 'x', null, env2);
    expect(none.credentials).toBeNull();
    expect(none.helper).toMatch(/docker-credential-pass/);
  });

  test('a broken file is BAD_CONFIG, never silently ignored', () => {
    const d = tmpdir('dmfs-creds-');
    dirs.push(d);
    fs.writeFileSync(path.join(d, 'bad.json'), '{nope');
    expect(() => lookupCredentials('h', 'r', null, { REGISTRY_AUTH_FILE: path.join(d, 'bad.json') })).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
  });
});

test('WWW-Authenticate challenges', () => {
  expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"')).toEqual({
    scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/debian:pull' },
  });
  expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({ scheme: 'basic', params: { realm: 'Registry Realm' } });
  expect(parseChallenge('Negotiate abc')).toBeNull();
});

describe('layer prefetch', () => {
  test('bounded read-ahead, in order, cancel on close', async () => {
    const produced = new Map<number, number>();
    const src = (key: number) => async function* (): AsyncGenerator<Buffer> {
      for (let i = 0; i < 64; i++) {
        produced.set(key, (produced.get(key) ?? 0) + 1);
        yield Buffer.alloc(64 * 1024, key);
      }
    };
    const p = new LayerPrefetch(new Map([0, 1, 2, 3].map((k) => [k, src(k)])), { concurrency: 2, maxBufferedBytes: 256 * 1024 });
    p.schedule([0, 1, 2, 3]);
    await new Promise((r) => setTimeout(r, 50));
    // Two downloads started, each stopped near its bound; the other two not at all.
    expect(produced.get(0)).toBeLessThanOrEqual(5);
    expect(produced.get(1)).toBeLessThanOrEqual(5);
    expect(produced.has(2)).toBe(false);
    let n = 0;
    for await (const c of p.stream(0)) {
      expect(c[0]).toBe(0);
      n += c.length;
    }
    expect(n).toBe(64 * 64 * 1024);
    await new Promise((r) => setTimeout(r, 20));
    expect(produced.has(2)).toBe(true);
    p.close();
  });
});

test('layer progress lines: bytes, rate, ETA on a TTY only', () => {
  const writes: string[] = [];
  let now = 0;
  const bars = new LayerProgress({ isTTY: true, columns: 120, write: (s) => writes.push(s) > 0 }, { now: () => now, intervalMs: 100 });
  const layer = (downloadedBytes: number, state: 'downloading' | 'exists') => ({ index: 0, digest: `sha256:${'c'.repeat(64)}`, sizeBytes: 4 << 20, downloadedBytes, state });
  bars.update(pullLines([layer(0, 'downloading'), { ...layer(0, 'exists'), digest: `sha256:${'d'.repeat(64)}` }]));
  now = 1000;
  bars.update(pullLines([layer(2 << 20, 'downloading'), { ...layer(0, 'exists'), digest: `sha256:${'d'.repeat(64)}` }]));
  const last = writes[writes.length - 1];
  expect(last).toMatch(/^\x1b\[2A/); // Redrawn in place over the two lines.
  expect(last).toMatch(/cccccccccccc {2}Downloading +\[#+-+\] +50% 2\.00 MiB\/4\.00 MiB {2}2\.00 MiB\/s {2}ETA 0:01/);
  expect(last).toMatch(/dddddddddddd {2}Already exists/);
  const quiet: string[] = [];
  new LayerProgress({ isTTY: false, write: (s) => quiet.push(s) > 0 }).update(pullLines([layer(1, 'downloading')]), true);
  expect(quiet).toEqual([]);
});

const T = 1_700_000_000_000_000_000n;

/** A tree with inode numbers replaced by the order they first appear in (hard links stay visible). */
async function treeOf(store: TestStore['store'], layer: string): Promise<Map<string, unknown>> {
  const inos = new Map<number, number>();
  const out = new Map<string, unknown>();
  for (const [p, node] of await readTree(store, layer)) {
    if (!inos.has(node.ino)) inos.set(node.ino, inos.size);
    out.set(p, { ...node, ino: inos.get(node.ino) });
  }
  return out;
}

/** The tree the layout gives when imported into a store of its own. */
async function importedTree(make: () => Promise<TestStore>, spec: string): Promise<Map<string, unknown>> {
  const other = await make();
  try {
    const r = await importImage(other.store, spec, { name: 'local' });
    return await treeOf(other.store, r.name);
  } finally {
    await other.close();
  }
}
function layers(): LayerSpec[] {
  // Incompressible (xorshift), so the gzip blob is ~3 MiB too: cuts and flips land inside it.
  const big = Buffer.alloc(3 * 1024 * 1024 + 5);
  let x = 0x2545f491;
  for (let i = 0; i < big.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    big[i] = x & 0xff;
  }
  return [
    { entries: [dir('etc'), file('etc/os-release', 'ID=test\n'), file('big.bin', big), dir('gone'), file('gone/x', 'x')] },
    { compression: 'zstd', entries: [whiteout('gone'), file('etc/motd', 'hi\n', { mtimeNs: T })] },
    { compression: 'none', entries: [file('app', '#!/bin/sh\n', { mode: 0o755 })] },
  ];
}

/** Seeds `repo:tag` of the fake registry from an OCI layout built by the helpers. */
async function seed(reg: FakeRegistry, repo: string, tag: string, specs: LayerSpec[]): Promise<{ layout: string; blobDigests: string[]; diffIds: string[]; manifestDigest: string; configDigest: string }> {
  const layout = tmpdir('dmfs-seed-');
  const built = await buildOci(layout, specs, { ref: tag });
  const blob = (d: string): Buffer => fs.readFileSync(path.join(layout, 'blobs', 'sha256', d.slice(7)));
  for (const d of [...built.blobDigests, built.configDigest]) reg.putBlob(repo, blob(d));
  const manifest = JSON.parse(blob(built.manifestDigest).toString());
  const digest = reg.putManifest(repo, tag, manifest, MANIFEST_MEDIA_TYPES.ociManifest);
  expect(digest).toBe(built.manifestDigest);
  return { layout, ...built };
}

describe.each(storeFactories())('pull and push through the fake registry (%s)', (_label, make) => {
  let reg: FakeRegistry;
  let ts: TestStore;
  const layouts: string[] = [];
  beforeEach(async () => {
    reg = new FakeRegistry();
    await reg.start();
    ts = await make();
  });
  afterEach(async () => {
    await ts.close();
    await reg.stop();
  });
  afterAll(() => layouts.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

  test('pull: the same tree as importing the layout, labels, no blob fetched again', async () => {
    const s = await seed(reg, 'team/app', 'v1', layers());
    layouts.push(s.layout);
    const r = await pullImage(ts.store, `${reg.host}/team/app:v1`, { plainHttp: true });
    expect(r).toMatchObject({ name: `${reg.host}/team/app:v1`, manifestDigest: s.manifestDigest, blobsFetched: 3, alreadyPresent: false, format: 'registry' });
    expect(r.layers.map((l) => l.diffId)).toEqual(s.diffIds);
    expect(await treeOf(ts.store, r.name)).toEqual(await importedTree(make, `${s.layout}:v1`));
    const top = await ts.store.getLayer(r.name);
    expect(top.labels[LABELS.sourceRepository]).toBe(`${reg.host}/team/app`);
    expect(top.labels[LABELS.blobDigest]).toBe(s.blobDigests[2]);

    const gets = reg.blobGets().length;
    const again = await pullImage(ts.store, `${reg.host}/team/app:v1`, { plainHttp: true, name: 'again' });
    expect(again).toMatchObject({ blobsFetched: 0, bytesDownloaded: 0 });
    // Only the config is read again; no layer blob.
    expect(reg.blobGets().slice(gets).map((g) => g.path)).toEqual([`/v2/team/app/blobs/${s.configDigest}`]);
    for (const d of s.blobDigests) expect(reg.blobGets(d)).toHaveLength(1);
  });

  test('pull: a manifest list picks the platform; an unknown platform lists what there is', async () => {
    const s = await seed(reg, 'multi', 'one', layers().slice(0, 1));
    layouts.push(s.layout);
    const m = reg.manifests.get(`multi:one`)!;
    reg.putManifest('multi', 'v1', {
      schemaVersion: 2, mediaType: MANIFEST_MEDIA_TYPES.dockerList,
      manifests: [
        { mediaType: MANIFEST_MEDIA_TYPES.ociManifest, digest: 'sha256:' + 'e'.repeat(64), size: 10, platform: { os: 'linux', architecture: 'riscv64' } },
        { mediaType: MANIFEST_MEDIA_TYPES.ociManifest, digest: s.manifestDigest, size: m.body.length, platform: { os: 'linux', architecture: 'amd64' } },
      ],
    }, MANIFEST_MEDIA_TYPES.dockerList);
    const r = await pullImage(ts.store, `${reg.host}/multi:v1`, { plainHttp: true, platform: { os: 'linux', architecture: 'amd64' } });
    expect(r.manifestDigest).toBe(s.manifestDigest);
    const err = await pullImage(ts.store, `${reg.host}/multi:v1`, { plainHttp: true, platform: { os: 'linux', architecture: 's390x' } }).catch((e) => e);
    expect(err).toMatchObject({ code: 'NOT_FOUND' });
    expect(err.message).toMatch(/linux\/riscv64, linux\/amd64/);
  });

  test('pull: an unknown tag lists the tags the repository has', async () => {
    layouts.push((await seed(reg, 'app', 'v1', layers().slice(0, 1))).layout);
    const err = await pullImage(ts.store, `${reg.host}/app:v2`, { plainHttp: true }).catch((e) => e);
    expect(err).toMatchObject({ code: 'NOT_FOUND' });
    expect(err.message).toMatch(/has no tag v2; it has: v1/);
  });

  test('pull: a cut connection resumes with Range; a registry ignoring Range is skipped through', async () => {
    const s = await seed(reg, 'app', 'v1', layers());
    layouts.push(s.layout);
    reg.cutBlob = { digest: s.blobDigests[0], afterBytes: 1_000_000 };
    const r = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, resumeDelayMs: 1 });
    expect(r.resumes).toBe(1);
    expect(reg.blobGets(s.blobDigests[0]).map((g) => g.range)).toEqual([null, 'bytes=1000000-']);
    expect(await treeOf(ts.store, r.name)).toEqual(await importedTree(make, `${s.layout}:v1`));
  });

  test('pull: a registry that ignores Range sends the blob again and the first bytes are skipped', async () => {
    await reg.stop();
    reg = new FakeRegistry({ ignoreRange: true });
    await reg.start();
    const s = await seed(reg, 'app', 'v1', layers().slice(0, 1));
    layouts.push(s.layout);
    reg.cutBlob = { digest: s.blobDigests[0], afterBytes: 700_000 };
    const r = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, resumeDelayMs: 1 });
    expect(r).toMatchObject({ resumes: 1, bytesDownloaded: fs.statSync(path.join(s.layout, 'blobs', 'sha256', s.blobDigests[0].slice(7))).size });
    expect(await treeOf(ts.store, r.name)).toEqual(await importedTree(make, `${s.layout}:v1`));
  });

  test('pull: flipped bytes fail the pull and leave the store as it was', async () => {
    const s = await seed(reg, 'app', 'v1', layers());
    layouts.push(s.layout);
    const before = await ts.snapshot();
    reg.flipBlob = { digest: s.blobDigests[0], atByte: 2_000_000 };
    expect(await codeOf(pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true }))).toBe('BAD_IMAGE');
    expect(await ts.snapshot()).toBe(before);
  });

  test('push: uploads each blob once, a second push uploads none, pull gives the tree back', async () => {
    const s = await seed(reg, 'src', 'v1', layers());
    layouts.push(s.layout);
    await importImage(ts.store, `${s.layout}:v1`, { name: 'img' });
    // Imported from a layout: its blobs are not in this registry, so they are exported and sent.
    const first = await pushImage(ts.store, 'img', `${reg.host}/dst:v1`, { plainHttp: true, chunkSizeBytes: 256 * 1024 });
    expect(first.layers.map((l) => l.action)).toEqual(['uploaded', 'uploaded', 'uploaded']);
    expect(first.blobsUploaded).toBe(4);
    expect(reg.requests.filter((q) => q.method === 'PATCH').length).toBeGreaterThan(3); // chunked
    const second = await pushImage(ts.store, 'img', `${reg.host}/dst:v1`, { plainHttp: true });
    expect(second).toMatchObject({ blobsUploaded: 0, bytesUploaded: 0, manifestDigest: first.manifestDigest });
    expect(second.layers.map((l) => l.action)).toEqual(['exists', 'exists', 'exists']);

    // To another repository of the same registry: mounted from where it was pushed.
    const elsewhere = await pushImage(ts.store, 'img', `${reg.host}/dst2:v1`, { plainHttp: true });
    expect(elsewhere.layers.map((l) => l.action)).toEqual(['mounted', 'mounted', 'mounted']);
    const pulled = await pullImage(ts.store, `${reg.host}/dst:v1`, { plainHttp: true, name: 'back' });
    expect(pulled.manifestDigest).toBe(first.manifestDigest);
    expect(await treeOf(ts.store, 'back')).toEqual(await treeOf(ts.store, 'img'));
  });

  test('push: a pulled image goes to another repository by cross-repository mounts, to its own with HEADs only', async () => {
    const s = await seed(reg, 'a/src', 'v1', layers());
    layouts.push(s.layout);
    await pullImage(ts.store, `${reg.host}/a/src:v1`, { plainHttp: true, name: 'pulled' });
    const same = await pushImage(ts.store, 'pulled', `${reg.host}/a/src:v2`, { plainHttp: true });
    expect(same.layers.map((l) => l.action)).toEqual(['exists', 'exists', 'exists']);
    expect(same.layers.map((l) => l.digest)).toEqual(s.blobDigests);
    const moved = await pushImage(ts.store, 'pulled', `${reg.host}/b/dst:v1`, { plainHttp: true });
    expect(moved.layers.map((l) => l.action)).toEqual(['mounted', 'mounted', 'mounted']);
    expect(moved.bytesUploaded).toBeLessThan(10_000); // the config only
  });

  test('Bearer tokens: fetched with the credentials, per scope; wrong ones are REGISTRY_AUTH', async () => {
    await reg.stop();
    reg = new FakeRegistry({ auth: 'bearer', user: 'alice', password: 's3cret' });
    await reg.start();
    const s = await seed(reg, 'app', 'v1', layers().slice(0, 2));
    layouts.push(s.layout);
    const creds = parseCredsOption('alice:s3cret');
    const r = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, credentials: creds });
    expect(r.blobsFetched).toBe(2);
    expect(reg.requests.filter((q) => q.path === '/token').length).toBe(1);
    const pushed = await pushImage(ts.store, r.name, `${reg.host}/other:v1`, { plainHttp: true, credentials: creds });
    expect(pushed.layers.map((l) => l.action)).toEqual(['mounted', 'mounted']);

    const wrong = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, credentials: parseCredsOption('alice:nope'), name: 'x' }).catch((e) => e);
    expect(wrong).toMatchObject({ code: 'REGISTRY_AUTH' });
    expect(wrong.message).toMatch(new RegExp(`registry ${reg.host}.*token server.*--creds`));
    const none = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, name: 'y', env: { HOME: '/nonexistent' } }).catch((e) => e);
    expect(none).toMatchObject({ code: 'REGISTRY_AUTH' });
    expect(none.message).toMatch(/pass --creds USER:PASSWORD, or log in with `docker login/);
  });

  test('Basic auth', async () => {
    await reg.stop();
    reg = new FakeRegistry({ auth: 'basic', user: 'bob', password: 'pw' });
    await reg.start();
    layouts.push((await seed(reg, 'app', 'v1', layers().slice(0, 1))).layout);
    const err = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, env: { HOME: '/nonexistent' } }).catch((e) => e);
    expect(err).toMatchObject({ code: 'REGISTRY_AUTH' });
    expect(err.message).toMatch(/asks for a user name and password/);
    const ok = await pullImage(ts.store, `${reg.host}/app:v1`, { plainHttp: true, credentials: parseCredsOption('bob:pw') });
    expect(ok.blobsFetched).toBe(1);
  });

  test('unreachable and non-TLS registries are named', async () => {
    expect(await codeOf(pullImage(ts.store, '127.0.0.1:1/x:y', { plainHttp: true }))).toBe('REGISTRY_UNREACHABLE');
    const tlsErr = await pullImage(ts.store, `${reg.host}/x:y`, {}).catch((e) => e);
    expect(tlsErr).toMatchObject({ code: 'REGISTRY_TLS' });
    expect(tlsErr.message).toMatch(/--plain-http/);
  });
});
