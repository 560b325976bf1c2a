/**
 * The snapshots API over gRPC on a unix socket, against a real pool and store, with a mount
 * host that records what it is asked (the FUSE side is the integration test's). Requests are
 * shaped as containerd 1.6's metadata store sends them: keys NAMESPACE/SEQ/KEY, the unpack
 * key format `extract-N-R CHAINID`, the remote-snapshotter label and Walk filter.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { tempPool } from '../../support/temp-pool';
import { SnapshotterService, namespaceOfKey, type SnapshotMountHost } from '../../../src/snapshotter/snapshotter-service';
import { snapshotsClient, type WireInfo, type WireMount } from '../../../src/snapshotter/snapshots-proto';
import { snapshotFilter } from '../../../src/snapshotter/list-filters';
import { layerNameForKey, type SnapshotInfo } from '../../../src/snapshotter/snapshot-records';
import type { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';

const CHAIN = `sha256:${'ab'.repeat(32)}`;

class RecordingMountHost implements SnapshotMountHost {
  readonly live = new Map<string, { layer: string; readOnly: boolean }>();
  readonly calls: string[] = [];
  async mount(layerName: string, mountpoint: string, opts: { readOnly: boolean }): Promise<void> {
    this.calls.push(`mount ${layerName} ${opts.readOnly ? 'ro' : 'rw'}`);
    fs.mkdirSync(mountpoint, { recursive: true }); // the host makes the mountpoint (SnapshotMountHost)
    this.live.set(mountpoint, { layer: layerName, readOnly: opts.readOnly });
  }
  async unmount(mountpoint: string): Promise<void> {
    this.calls.push(`unmount ${this.live.get(mountpoint)?.layer}`);
    this.live.delete(mountpoint);
  }
}

type Client = ReturnType<typeof snapshotsClient>;

function call<T>(client: Client, method: string, req: object, ns = 'default'): Promise<T> {
  const md = new grpc.Metadata();
  if (ns) md.set('containerd-namespace', ns);
  return new Promise((resolve, reject) => {
    (client[method] as (r: object, m: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: T) => void) => void)(req, md, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function list(client: Client, filters: string[] = [], ns = ''): Promise<WireInfo[]> {
  const md = new grpc.Metadata();
  if (ns) md.set('containerd-namespace', ns);
  return new Promise((resolve, reject) => {
    const out: WireInfo[] = [];
    const stream = (client.List as (r: object, m: grpc.Metadata) => grpc.ClientReadableStream<{ info: WireInfo[] }>)({ filters }, md);
    stream.on('data', (m: { info: WireInfo[] }) => out.push(...m.info));
    stream.on('error', reject);
    stream.on('end', () => resolve(out));
  });
}

describe('SnapshotterService (gRPC, real store, recorded mounts)', () => {
  let pool: Pool;
  let remove: () => Promise<void>;
  let service: SnapshotterService;
  let client: Client;
  let mounts: RecordingMountHost;
  let dir: string;

  beforeEach(async () => {
    const t = await tempPool();
    pool = t.pool;
    remove = t.remove;
    dir = t.root;
    mounts = new RecordingMountHost();
    const socketPath = path.join(dir, 'run', 'snap.sock');
    service = await SnapshotterService.start({ store: pool.store, mountHost: mounts, mountsDir: path.join(dir, 'snapshots'), socketPath });
    client = snapshotsClient(`unix://${socketPath}`);
  });

  afterEach(async () => {
    client.close();
    await service.stop();
    await remove();
  });

  /** Prepare, write a file through the store, Commit: what an unpack does. */
  async function unpack(key: string, name: string, parent = '', labels: Record<string, string> = {}): Promise<void> {
    // No namespace header, as containerd 1.6 sends: the namespace comes from the key.
    await call(client, 'Prepare', { key, parent, labels }, '');
    const layerFs = await pool.store.openLayer(layerNameForKey(key));
    const f = await layerFs.mknod(layerFs.rootIno, `f-${name.length}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await layerFs.write(f.ino, Buffer.alloc(100_000, 1), 0);
    await layerFs.close();
    await call(client, 'Commit', { name, key, labels }, '');
  }

  test('Prepare answers a bind mount of its own mount, Commit makes an image layer, Stat/List/Usage report it', async () => {
    const res = await call<{ mounts: WireMount[] }>(client, 'Prepare', { key: `default/1/extract-1-x ${CHAIN}`, parent: '', labels: { a: '1' } });
    expect(res.mounts).toEqual([{ type: 'bind', source: expect.stringContaining(path.join(dir, 'snapshots')), target: '', options: ['rbind', 'rw'] }]);
    expect(fs.statSync(path.join(dir, 'snapshots')).mode & 0o777).toBe(0o700);
    expect(mounts.calls).toEqual([`mount ${layerNameForKey(`default/1/extract-1-x ${CHAIN}`)} rw`]);

    const layerFs = await pool.store.openLayer(layerNameForKey(`default/1/extract-1-x ${CHAIN}`));
    const f = await layerFs.mknod(layerFs.rootIno, 'hello', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await layerFs.write(f.ino, Buffer.alloc(200_000, 3), 0);
    await layerFs.close();
    const usage = await call<{ size: number; inodes: number }>(client, 'Usage', { key: `default/1/extract-1-x ${CHAIN}` });
    expect(usage.inodes).toBe(1);
    expect(usage.size).toBeGreaterThanOrEqual(200_000);

    await call(client, 'Commit', { name: `default/2/${CHAIN}`, key: `default/1/extract-1-x ${CHAIN}`, labels: { b: '2' } });
    expect(mounts.live.size).toBe(0);
    const stat = await call<{ info: WireInfo }>(client, 'Stat', { key: `default/2/${CHAIN}` });
    expect(stat.info).toMatchObject({ name: `default/2/${CHAIN}`, parent: '', kind: 'COMMITTED', labels: { a: '1', b: '2' } });
    const layer = await pool.store.getLayer(layerNameForKey(`default/2/${CHAIN}`));
    expect(layer).toMatchObject({ kind: 'image', state: 'committed', parent: 'base' });
    expect(layer.labels['dmfs.chain_id']).toBe(CHAIN); // from the commit name: a later pull finds it
    expect((await pool.store.listLayers()).map((l) => l.name)).toEqual(['base', layer.name]); // the container is gone
    expect((await list(client)).map((i) => i.name)).toEqual([`default/2/${CHAIN}`]);
  });

  test('View mounts read-only; Remove unmounts; a parent with children cannot be removed', async () => {
    await unpack('default/1/extract', 'default/2/base-img');
    const view = await call<{ mounts: WireMount[] }>(client, 'View', { key: 'default/3/v', parent: 'default/2/base-img', labels: {} });
    expect(view.mounts[0].options).toEqual(['rbind', 'ro']);
    expect((await call<{ info: WireInfo }>(client, 'Stat', { key: 'default/3/v' })).info.kind).toBe('VIEW');
    const again = await call<{ mounts: WireMount[] }>(client, 'Mounts', { key: 'default/3/v' });
    expect(again.mounts).toEqual(view.mounts);
    await expect(call(client, 'Remove', { key: 'default/2/base-img' })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await call(client, 'Remove', { key: 'default/3/v' });
    // Gone for containerd at once; unmounted and removed in the background, which Cleanup waits for.
    await expect(call(client, 'Stat', { key: 'default/3/v' })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await call(client, 'Remove', { key: 'default/2/base-img' });
    expect(await list(client)).toEqual([]);
    await service.settled();
    expect(mounts.live.size).toBe(0);
    expect((await pool.store.listLayers()).map((l) => l.name)).toEqual(['base']);
  });

  test('errors carry the gRPC codes containerd maps back', async () => {
    await unpack('default/1/extract', 'default/2/img');
    await call(client, 'Prepare', { key: 'default/3/c', parent: 'default/2/img', labels: {} });
    await expect(call(client, 'Prepare', { key: 'default/3/c', parent: 'default/2/img', labels: {} })).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    await expect(call(client, 'Prepare', { key: 'default/4/d', parent: 'default/9/missing', labels: {} })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(call(client, 'Prepare', { key: 'default/4/d', parent: 'default/3/c', labels: {} })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await expect(call(client, 'Stat', { key: 'default/5/none' })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(call(client, 'Commit', { name: 'default/2/img', key: 'default/3/c', labels: {} })).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    await expect(call(client, 'Mounts', { key: 'default/2/img' })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await expect(call(client, 'Prepare', { key: '', parent: '', labels: {} })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(list(client, ['labels."unterminated==x'])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  test('fast path: a Prepare naming a layer the pool holds answers ALREADY_EXISTS and the Walk containerd does next finds the snapshot', async () => {
    // A layer of dmfs's own (dmfs import / dmfs pull label it with its ChainID).
    await pool.store.createLayer('imported', { kind: 'image', labels: { 'dmfs.chain_id': CHAIN } });
    const labels = { 'containerd.io/snapshot.ref': CHAIN, 'containerd.io/snapshot/cri.layer-digest': 'sha256:00' };
    await expect(call(client, 'Prepare', { key: `k8s.io/7/extract-1-y ${CHAIN}`, parent: '', labels }, 'k8s.io')).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    expect(mounts.calls).toEqual([]);
    const found = await list(client, [`labels."containerd.io/snapshot.ref"==${CHAIN},parent==""`], 'k8s.io');
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'COMMITTED', parent: '', labels });
    const alias = await pool.store.getLayer(layerNameForKey(found[0].name));
    expect(alias).toMatchObject({ kind: 'image', parent: 'imported', exclusiveBytes: 0 });
    // Asked again (another unpack of the same image): the same snapshot, no second layer.
    await expect(call(client, 'Prepare', { key: `k8s.io/8/extract-2-z ${CHAIN}`, parent: '', labels }, 'k8s.io')).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    expect(await pool.store.listLayers()).toHaveLength(3);
    // Without the label (ctr image import), the layer is unpacked as usual.
    const res = await call<{ mounts: WireMount[] }>(client, 'Prepare', { key: `k8s.io/9/extract-3-w ${CHAIN}`, parent: '', labels: {} }, 'k8s.io');
    expect(res.mounts).toHaveLength(1);
  });

  test('a layer unpacked in one namespace serves a pull in another; removed in either order, both layers go', async () => {
    await unpack(`a/1/extract-1-x ${CHAIN}`, `a/2/${CHAIN}`);
    const labels = { 'containerd.io/snapshot.ref': CHAIN };
    await expect(call(client, 'Prepare', { key: `b/1/extract-2-y ${CHAIN}`, parent: '', labels }, '')).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
    const [alias] = await list(client, [`labels."containerd.io/snapshot.ref"==${CHAIN}`]);
    expect(alias.name.startsWith('b/')).toBe(true);
    expect((await pool.store.getLayer(layerNameForKey(alias.name))).parent).toBe(layerNameForKey(`a/2/${CHAIN}`));
    // containerd's collector removes both snapshots (no parent between them for containerd), the dmfs parent first.
    await call(client, 'Remove', { key: `a/2/${CHAIN}` });
    await call(client, 'Remove', { key: alias.name });
    await service.settled();
    expect((await pool.store.listLayers()).map((l) => l.name)).toEqual(['base']);
  });

  test('Update replaces the labels or the named ones; List without a namespace header lists every namespace', async () => {
    await unpack('a/1/extract', 'a/2/img', '', { keep: 'k', drop: 'd' });
    await unpack('b/1/extract', 'b/2/img');
    const upd = await call<{ info: WireInfo }>(client, 'Update', { info: { name: 'a/2/img', labels: { add: 'x' } }, update_mask: { paths: ['labels.add', 'labels.drop'] } }, 'a');
    expect(upd.info.labels).toEqual({ keep: 'k', add: 'x' });
    const all = await call<{ info: WireInfo }>(client, 'Update', { info: { name: 'a/2/img', labels: { only: 'o' } }, update_mask: { paths: [] } }, 'a');
    expect(all.info.labels).toEqual({ only: 'o' });
    await expect(call(client, 'Update', { info: { name: 'a/2/img', kind: 'ACTIVE', labels: {} }, update_mask: { paths: ['kind'] } }, 'a')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect((await list(client)).map((i) => i.name).sort()).toEqual(['a/2/img', 'b/2/img']);
    expect((await list(client, [], 'b')).map((i) => i.name)).toEqual(['b/2/img']);
  });

  test('a removal interrupted after its mark is finished at the next start', async () => {
    await unpack('default/1/extract', 'default/2/img');
    await call(client, 'Prepare', { key: 'default/3/c', parent: 'default/2/img', labels: {} });
    // What a crash right after Remove's transaction leaves: the marks, the layers still there.
    const catalog = new (require('../../../src/snapshotter/snapshot-catalog').SnapshotCatalog)(pool.store);
    await catalog.remove('default/3/c');
    await catalog.remove('default/2/img');
    expect(await list(client)).toEqual([]);
    client.close();
    await service.stop();
    const socketPath = path.join(dir, 'run', 'snap.sock');
    service = await SnapshotterService.start({ store: pool.store, mountHost: mounts, mountsDir: path.join(dir, 'snapshots'), socketPath });
    client = snapshotsClient(`unix://${socketPath}`);
    expect((await pool.store.listLayers()).map((l) => l.name)).toEqual(['base']);
  });

  test('Cleanup removes mount directories no snapshot owns; a restart mounts the active snapshots again', async () => {
    await call(client, 'Prepare', { key: 'default/1/live', parent: '', labels: {} });
    fs.mkdirSync(path.join(dir, 'snapshots', '999'));
    await call(client, 'Cleanup', {});
    await service.settled();
    expect(fs.readdirSync(path.join(dir, 'snapshots'))).toEqual([String((await pool.store.getLayer(layerNameForKey('default/1/live'))).id)]);
    client.close();
    await service.stop();
    expect(mounts.live.size).toBe(0);
    const socketPath = path.join(dir, 'run', 'snap.sock');
    service = await SnapshotterService.start({ store: pool.store, mountHost: mounts, mountsDir: path.join(dir, 'snapshots'), socketPath });
    client = snapshotsClient(`unix://${socketPath}`);
    expect([...mounts.live.values()]).toEqual([{ layer: layerNameForKey('default/1/live'), readOnly: false }]);
  });
});

describe('containerd filters and keys', () => {
  const snap = (over: Partial<SnapshotInfo>): SnapshotInfo => ({
    key: 'ns/1/k', namespace: 'ns', kind: 'committed', parent: '', labels: {}, createdMs: 0, updatedMs: 0, layerName: 'x', layerId: 2, ...over,
  });

  test('selectors: ==, !=, ~=, presence, quoted label keys; commas AND, filters OR', () => {
    const s = snap({ key: 'ns/1/sha256:aa', parent: 'ns/0/p', labels: { 'containerd.io/snapshot.ref': 'sha256:aa', x: 'y' } });
    expect(snapshotFilter([])(s)).toBe(true);
    expect(snapshotFilter(['labels."containerd.io/snapshot.ref"==sha256:aa,parent=="ns/0/p"'])(s)).toBe(true);
    expect(snapshotFilter(['labels."containerd.io/snapshot.ref"==sha256:aa,parent==""'])(s)).toBe(false);
    expect(snapshotFilter(['kind==active', 'labels.x'])(s)).toBe(true);
    expect(snapshotFilter(['labels.z'])(s)).toBe(false);
    expect(snapshotFilter(['name~=^ns/1/', 'kind!=committed'])(s)).toBe(true);
    expect(snapshotFilter(['name~=^other'])(s)).toBe(false);
    expect(() => snapshotFilter(['name~=('])).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });

  test('namespaces from containerd 1.6 backend keys; layer names are valid, readable and distinct', () => {
    expect(namespaceOfKey('k8s.io/12/extract-1 sha256:aa')).toBe('k8s.io');
    expect(namespaceOfKey('plain-key')).toBe('');
    const a = layerNameForKey(`default/1/extract-123-Ab= ${CHAIN}`);
    expect(a).toMatch(/^ctd\/default\/1\/extract-123-Ab__sha256:[0-9a-f]{64}-[0-9a-f]{12}$/);
    expect(layerNameForKey('default/1/a b')).not.toBe(layerNameForKey('default/1/a_b'));
    expect(layerNameForKey('x'.repeat(5000)).length).toBeLessThanOrEqual(255);
  });
});
