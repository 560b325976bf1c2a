/**
 * Builds image sources for the tests: layer tars from entry lists (or raw bytes),
 * OCI layouts (dir or tar) and docker-save archives, with real digests.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as os from 'node:os';
import type { LayerStore, LayerFs, Ino } from '../../../../src/store/layer-store';
import { TarWriteEntry } from '../../../../src/image/tar-writer';
import { sh, writeTar } from './tar-helpers';
import { MemoryStore } from './memory-store';

export type Entry = { e: TarWriteEntry; body?: Buffer };

export interface LayerSpec {
  entries?: Entry[];
  /** A hand-made tar instead of `entries`. */
  raw?: Buffer;
  compression?: 'gzip' | 'zstd' | 'none';
}

export const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export const T0 = 1_650_000_000_000_000_000n;

export function dir(p: string, extra: Partial<TarWriteEntry> = {}): Entry {
  return { e: { type: 'dir', path: p, mode: 0o755, uid: 0, gid: 0, mtimeNs: T0, ...extra } };
}

export function file(p: string, content: string | Buffer, extra: Partial<TarWriteEntry> = {}): Entry {
  const body = Buffer.isBuffer(content) ? content : Buffer.from(content);
  return { e: { type: 'file', path: p, mode: 0o644, uid: 0, gid: 0, mtimeNs: T0, sizeBytes: body.length, ...extra }, body };
}

export function symlink(p: string, target: string): Entry {
  return { e: { type: 'symlink', path: p, linkPath: target, mode: 0o777, uid: 0, gid: 0, mtimeNs: T0 } };
}

export function hardlink(p: string, target: string): Entry {
  return { e: { type: 'hardlink', path: p, linkPath: target, mode: 0o644, uid: 0, gid: 0, mtimeNs: T0 } };
}

export function whiteout(p: string): Entry {
  const slash = p.lastIndexOf('/');
  return file(slash < 0 ? `.wh.${p}` : `${p.slice(0, slash)}/.wh.${p.slice(slash + 1)}`, '');
}

export function opaque(dirPath: string): Entry {
  return file(`${dirPath}/.wh..wh..opq`, '');
}

export async function layerTar(spec: LayerSpec): Promise<{ tar: Buffer; blob: Buffer }> {
  const tar = spec.raw ?? (await writeTar(spec.entries ?? []));
  const c = spec.compression ?? 'gzip';
  const blob = c === 'gzip' ? zlib.gzipSync(tar) : c === 'zstd' ? sh('zstd', ['-q', '-c'], { input: tar }) : tar;
  return { tar, blob };
}

const MEDIA = { gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd', none: 'application/vnd.oci.image.layer.v1.tar' };

export interface BuiltImage {
  diffIds: string[];
  blobDigests: string[];
  manifestDigest: string;
  configDigest: string;
}

function put(dirPath: string, data: Buffer): string {
  const d = sha256(data);
  fs.mkdirSync(path.join(dirPath, 'blobs', 'sha256'), { recursive: true });
  fs.writeFileSync(path.join(dirPath, 'blobs', 'sha256', d.slice(7)), data);
  return d;
}

/** Writes (or adds to) an OCI layout at `out` with image `ref`. */
export async function buildOci(out: string, layers: LayerSpec[], opts: { ref?: string; history?: unknown[]; tamper?: (blobs: string[]) => void } = {}): Promise<BuiltImage> {
  const diffIds: string[] = [];
  const descs: { mediaType: string; digest: string; size: number }[] = [];
  for (const l of layers) {
    const { tar, blob } = await layerTar(l);
    diffIds.push(sha256(tar));
    descs.push({ mediaType: MEDIA[l.compression ?? 'gzip'], digest: put(out, blob), size: blob.length });
  }
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/usr/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: opts.history ?? layers.map((_, i) => ({ created_by: `step ${i}` })),
  }));
  const configDigest = put(out, config);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
    layers: descs,
  }));
  const manifestDigest = put(out, manifest);
  fs.writeFileSync(path.join(out, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const indexFile = path.join(out, 'index.json');
  const index = fs.existsSync(indexFile) ? JSON.parse(fs.readFileSync(indexFile, 'utf8')) : { schemaVersion: 2, manifests: [] };
  index.manifests.push({
    mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length,
    annotations: { 'org.opencontainers.image.ref.name': opts.ref ?? 'latest' },
  });
  fs.writeFileSync(indexFile, JSON.stringify(index));
  opts.tamper?.(descs.map((d) => path.join(out, 'blobs', 'sha256', d.digest.slice(7))));
  return { diffIds, blobDigests: descs.map((d) => d.digest), manifestDigest, configDigest };
}

/** A legacy `docker save` archive: <id>/layer.tar (uncompressed), <config hex>.json, manifest.json. */
export async function buildDockerArchive(outFile: string, layers: LayerSpec[], repoTag: string): Promise<BuiltImage> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-docker-'));
  const diffIds: string[] = [];
  const layerPaths: string[] = [];
  for (const l of layers) {
    const { tar } = await layerTar({ ...l, compression: 'none' });
    const id = sha256(tar).slice(7);
    diffIds.push(sha256(tar));
    fs.mkdirSync(path.join(work, id), { recursive: true });
    fs.writeFileSync(path.join(work, id, 'layer.tar'), tar);
    fs.writeFileSync(path.join(work, id, 'VERSION'), '1.0');
    layerPaths.push(`${id}/layer.tar`);
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } }));
  const configName = `${sha256(config).slice(7)}.json`;
  fs.writeFileSync(path.join(work, configName), config);
  fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: layerPaths }]));
  sh('tar', ['-C', work, '-cf', outFile, '.']);
  fs.rmSync(work, { recursive: true });
  return { diffIds, blobDigests: [], manifestDigest: '', configDigest: sha256(config) };
}

export interface TreeNode {
  kind: string;
  mode: number;
  uid: number;
  gid: number;
  sizeBytes: number;
  mtimeNs: bigint;
  rdev: number;
  nlink: number;
  ino: Ino;
  target?: string;
  content?: string;
  xattrs: Record<string, string>;
}

/** Every entry of a layer's merged view, by path, read through LayerFs. */
export async function readTree(store: LayerStore, layer: string): Promise<Map<string, TreeNode>> {
  const fsys: LayerFs = await store.openLayer(layer, { readOnly: true });
  const out = new Map<string, TreeNode>();
  try {
    const visit = async (ino: Ino, p: string): Promise<void> => {
      for (const e of await fsys.readdir(ino)) {
        const cp = `${p}/${e.name}`;
        const a = await fsys.getattr(e.ino);
        const xattrs: Record<string, string> = {};
        for (const n of await fsys.listxattr(e.ino)) xattrs[n] = (await fsys.getxattr(e.ino, n))!.toString('hex');
        const node: TreeNode = {
          kind: a.kind, mode: a.mode & 0o7777, uid: a.uid, gid: a.gid, sizeBytes: a.kind === 'dir' ? 0 : a.sizeBytes,
          mtimeNs: a.mtimeNs, rdev: a.rdev, nlink: a.nlink, ino: a.ino, xattrs,
        };
        if (a.kind === 'symlink') node.target = await fsys.readlink(e.ino);
        if (a.kind === 'file') {
          const buf = Buffer.alloc(a.sizeBytes);
          let off = 0;
          while (off < a.sizeBytes) {
            const n = await fsys.read(e.ino, buf.subarray(off), off);
            if (n <= 0) break;
            off += n;
          }
          node.content = a.sizeBytes <= 256 ? buf.toString('utf8') : sha256(buf);
        }
        out.set(cp, node);
        if (a.kind === 'dir') await visit(e.ino, cp);
      }
    };
    await visit(fsys.rootIno, '');
  } finally {
    await fsys.close();
  }
  return out;
}

export interface TestStore {
  label: string;
  store: LayerStore;
  /** Names, kinds, states and labels of all layers, sorted: "the pool is as it was". */
  snapshot(): Promise<string>;
  close(): Promise<void>;
}

export async function snapshotOf(store: LayerStore): Promise<string> {
  const layers = await store.listLayers();
  return JSON.stringify(layers.map((l) => [l.name, l.kind, l.state, l.parent, l.labels, l.exclusiveBytes]).sort());
}

export type StoreFactory = [string, () => Promise<TestStore>];

/** The in-memory double, and the real pool (src/api) when it loads. */
export function storeFactories(): StoreFactory[] {
  const list: StoreFactory[] = [[
    'memory',
    async () => {
      const s = new MemoryStore();
      return { label: 'memory', store: s, snapshot: () => snapshotOf(s), close: async () => {} };
    },
  ]];
  let api: { Pool: { create(o: { root: string; sizeBytes?: number }): Promise<{ store: LayerStore; close(): Promise<void> }> } } | null = null;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    api = require('../../../../src/api');
  } catch {
    api = null;
  }
  if (api) {
    const Pool = api.Pool;
    list.push([
      'pool',
      async () => {
        const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-imgpool-'));
        const pool = await Pool.create({ root, sizeBytes: 8 * 1024 ** 3 });
        return {
          label: 'pool', store: pool.store, snapshot: () => snapshotOf(pool.store),
          close: async () => {
            await pool.close();
            fs.rmSync(root, { recursive: true, force: true });
          },
        };
      },
    ]);
  }
  return list;
}
