/**
 * `dmfs save`: an image layer chain as an OCI image layout (directory, or a tar of
 * one when the output ends in `.tar`), as skopeo (`oci:` / `oci-archive:`) and umoci
 * read it.
 *
 * - Layers: each image layer of the chain from the bottom up, exported as its changes
 *   (`exporter.ts`), gzip-compressed; empty tag layers (`dmfs.tag_of`) are skipped.
 *   The diff ids are those of the tars written now: a layer's tar is regenerated from
 *   the store, so it is not byte-identical to the one imported, and its digests differ.
 * - Config: the image config recorded at import (`dmfs.image.config`, from the nearest
 *   layer down the chain that has one) with `rootfs.diff_ids` set to the new diff ids
 *   and `history` rebuilt from each layer's `dmfs.history` (a generated entry for
 *   layers without one, e.g. commits); else a minimal linux config for this host.
 * - Index: `index.json` with `org.opencontainers.image.ref.name` = `ref` (default: the
 *   tag part of the image name, else `latest`). Saving into an existing layout adds the
 *   image and replaces any manifest with the same ref name.
 */
import { createWriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { once } from 'node:events';
import { dmfsError } from '../errors';
import type { LayerInfo, LayerStore } from '../store/layer-store';
import { DigestTap } from './digest';
import { exportLayer } from './exporter';
import { LABELS } from './importer';
import { TarWriter } from './tar-writer';

export const MEDIA_TYPES = {
  layout: '1.0.0',
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
} as const;
const REF_NAME = 'org.opencontainers.image.ref.name';

export interface SaveOptions {
  /** Ref name in index.json; default the image name's tag, else 'latest'. */
  ref?: string;
  /** Layer compression; default gzip. */
  compression?: 'gzip' | 'none';
  /** Called after each layer. */
  onLayer?: (done: number, total: number) => void;
}

export interface SaveResult {
  output: string;
  ref: string;
  manifestDigest: string;
  configDigest: string;
  layers: { name: string; digest: string; diffId: string; sizeBytes: number }[];
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

function hostArch(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

export function defaultRef(imageName: string): string {
  const lastSlash = imageName.lastIndexOf('/');
  const colon = imageName.lastIndexOf(':');
  return colon > lastSlash && colon < imageName.length - 1 ? imageName.slice(colon + 1) : 'latest';
}

/** The image layers from the bottom (just above base) to `name`, without empty tag layers. */
export async function imageChain(store: LayerStore, name: string): Promise<LayerInfo[]> {
  const chain: LayerInfo[] = [];
  let cur: LayerInfo | null = await store.getLayer(name);
  if (cur.kind !== 'image') throw dmfsError('WRONG_LAYER_KIND', `${name} is a ${cur.kind} layer; save takes an image (commit a container first)`);
  while (cur && cur.kind !== 'base') {
    if (cur.kind !== 'image') throw dmfsError('WRONG_LAYER_KIND', `${cur.name} below ${name} is not an image layer`);
    if (cur.state !== 'committed') throw dmfsError('WRONG_LAYER_KIND', `${cur.name} is still ${cur.state}`);
    if (cur.labels[LABELS.tagOf] === undefined) chain.push(cur);
    cur = cur.parent === null ? null : await store.getLayer(cur.parent);
  }
  return chain.reverse();
}

async function writeBlob(blobsDir: string, data: Buffer): Promise<{ digest: string; size: number }> {
  const tap = new DigestTap();
  tap.update(data);
  const digest = tap.digest();
  const file = path.join(blobsDir, digest.slice('sha256:'.length));
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, data);
  await fsp.rename(tmp, file);
  return { digest, size: data.length };
}

/**
 * Streams one layer's export (its changes as a tar, gzip-compressed unless 'none') into
 * `sink`, hashing as it goes: `digest` and `sizeBytes` of what reached the sink, `diffId`
 * of the uncompressed tar. The sink's promise is the backpressure.
 */
export async function streamLayerBlob(
  store: LayerStore, layer: string, compression: 'gzip' | 'none', sink: (chunk: Buffer) => Promise<void>,
): Promise<{ digest: string; diffId: string; sizeBytes: number }> {
  const blobTap = new DigestTap();
  const diffTap = new DigestTap();
  const gz = compression === 'gzip' ? zlib.createGzip({ level: 6 }) : null;
  const out = async (chunk: Buffer): Promise<void> => {
    blobTap.update(chunk);
    await sink(chunk);
  };
  let gzDone: Promise<void> = Promise.resolve();
  if (gz) {
    gzDone = (async () => {
      for await (const chunk of gz) await out(chunk as Buffer);
    })();
    // A failing sink ends the loop above; the export must not wait on a 'drain' that never comes.
    gzDone.catch(() => gz.destroy());
  }
  try {
    await exportLayer(store, layer, async (chunk) => {
      diffTap.update(chunk);
      if (gz) {
        if (!gz.write(chunk)) await Promise.race([once(gz, 'drain'), gzDone.then(() => undefined)]);
      } else await out(chunk);
    });
    if (gz) {
      gz.end();
      await gzDone;
    }
  } catch (err) {
    gz?.destroy();
    await gzDone.catch(() => undefined);
    throw err;
  }
  return { digest: blobTap.digest(), diffId: diffTap.digest(), sizeBytes: blobTap.sizeBytes };
}

/** Streams one layer's export through gzip into a blob; returns its digests. */
async function writeLayerBlob(
  store: LayerStore, layer: string, blobsDir: string, compression: 'gzip' | 'none',
): Promise<{ digest: string; diffId: string; size: number }> {
  const tmp = path.join(blobsDir, `.layer-${process.pid}-${Date.now()}.tmp`);
  const out = createWriteStream(tmp);
  let result: { digest: string; diffId: string; sizeBytes: number };
  try {
    result = await streamLayerBlob(store, layer, compression, async (chunk) => {
      if (!out.write(chunk)) await once(out, 'drain');
    });
    out.end();
    await once(out, 'finish');
  } catch (err) {
    out.destroy();
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fsp.rename(tmp, path.join(blobsDir, result.digest.slice('sha256:'.length)));
  return { digest: result.digest, diffId: result.diffId, size: result.sizeBytes };
}

function parseLabelJson(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A layer's history entries: those recorded at import, else one generated entry. */
export function layerHistory(l: LayerInfo): unknown[] {
  const h = parseLabelJson(l.labels[LABELS.history]);
  if (Array.isArray(h) && h.length > 0) return h;
  return [{
    created: new Date(l.createdMs).toISOString(),
    created_by: l.labels[LABELS.source] ? `dmfs import (${l.labels[LABELS.source]})` : 'dmfs commit',
  }];
}

/**
 * The image config written for `imageName` (see the file comment): the recorded one from
 * the nearest layer down the chain, else a minimal linux config, with these diff ids
 * and history.
 */
export async function buildImageConfig(
  store: LayerStore, imageName: string, chain: readonly LayerInfo[], diffIds: readonly string[], history: unknown[],
): Promise<Record<string, unknown>> {
  let base: Record<string, unknown> | null = null;
  let cur: LayerInfo | null = await store.getLayer(imageName);
  while (cur && base === null) {
    const c = parseLabelJson(cur.labels[LABELS.config]);
    if (typeof c === 'object' && c !== null && !Array.isArray(c)) base = c as Record<string, unknown>;
    cur = cur.parent === null ? null : await store.getLayer(cur.parent);
  }
  const top = chain[chain.length - 1];
  const config: Record<string, unknown> = {
    ...(base ?? { architecture: hostArch(), os: 'linux', config: {} }),
    rootfs: { type: 'layers', diff_ids: [...diffIds] },
    history,
  };
  if (base === null || config.created === undefined) config.created = new Date(top ? top.createdMs : Date.now()).toISOString();
  return config;
}

async function isEmptyDir(dir: string): Promise<boolean> {
  try {
    return (await fsp.readdir(dir)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

async function saveToDir(store: LayerStore, imageName: string, dir: string, opts: SaveOptions): Promise<SaveResult> {
  const layoutFile = path.join(dir, 'oci-layout');
  const hasLayout = await fsp.stat(layoutFile).then(() => true, () => false);
  if (!hasLayout && !(await isEmptyDir(dir))) {
    throw dmfsError('EXISTS', `${dir} is not empty and not an OCI image layout`);
  }
  const chain = await imageChain(store, imageName);
  const blobsDir = path.join(dir, 'blobs', 'sha256');
  await fsp.mkdir(blobsDir, { recursive: true });
  if (!hasLayout) await fsp.writeFile(layoutFile, JSON.stringify({ imageLayoutVersion: MEDIA_TYPES.layout }));

  const compression = opts.compression ?? 'gzip';
  const layers: SaveResult['layers'] = [];
  const layerDescs: Descriptor[] = [];
  const history: unknown[] = [];
  for (const l of chain) {
    const b = await writeLayerBlob(store, l.name, blobsDir, compression);
    layers.push({ name: l.name, digest: b.digest, diffId: b.diffId, sizeBytes: b.size });
    layerDescs.push({ mediaType: compression === 'gzip' ? MEDIA_TYPES.layerGzip : MEDIA_TYPES.layerTar, digest: b.digest, size: b.size });
    history.push(...layerHistory(l));
    opts.onLayer?.(layers.length, chain.length);
  }

  const config = await buildImageConfig(store, imageName, chain, layers.map((l) => l.diffId), history);
  const configBlob = await writeBlob(blobsDir, Buffer.from(JSON.stringify(config)));
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config: { mediaType: MEDIA_TYPES.config, digest: configBlob.digest, size: configBlob.size },
    layers: layerDescs,
  };
  const manifestBlob = await writeBlob(blobsDir, Buffer.from(JSON.stringify(manifest)));

  const ref = opts.ref ?? defaultRef(imageName);
  const indexFile = path.join(dir, 'index.json');
  let index: { schemaVersion: number; mediaType?: string; manifests: Descriptor[] } = { schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests: [] };
  if (hasLayout) {
    try {
      const parsed = JSON.parse(await fsp.readFile(indexFile, 'utf8'));
      if (Array.isArray(parsed?.manifests)) index = parsed;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw dmfsError('BAD_IMAGE', `${indexFile} is not valid JSON`, err);
    }
  }
  index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== ref);
  index.manifests.push({ mediaType: MEDIA_TYPES.manifest, digest: manifestBlob.digest, size: manifestBlob.size, annotations: { [REF_NAME]: ref } });
  const tmpIndex = `${indexFile}.tmp-${process.pid}`;
  await fsp.writeFile(tmpIndex, JSON.stringify(index));
  await fsp.rename(tmpIndex, indexFile);
  return { output: dir, ref, manifestDigest: manifestBlob.digest, configDigest: configBlob.digest, layers };
}

/** Writes the OCI layout of `imageName` to `output` (a directory, or a tar file when it ends in `.tar`). */
export async function saveImage(store: LayerStore, imageName: string, output: string, opts: SaveOptions = {}): Promise<SaveResult> {
  if (!output.endsWith('.tar')) return saveToDir(store, imageName, output, opts);
  const work = await fsp.mkdtemp(path.join(path.dirname(path.resolve(output)), '.dmfs-save-'));
  try {
    const result = await saveToDir(store, imageName, work, opts);
    const tmpTar = `${output}.tmp-${process.pid}`;
    const out = createWriteStream(tmpTar);
    const w = new TarWriter(async (chunk) => {
      if (!out.write(chunk)) await once(out, 'drain');
    });
    const blobs = (await fsp.readdir(path.join(work, 'blobs', 'sha256'))).sort();
    await w.add({ type: 'file', path: 'oci-layout', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n }, await fsp.readFile(path.join(work, 'oci-layout')));
    await w.add({ type: 'file', path: 'index.json', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n }, await fsp.readFile(path.join(work, 'index.json')));
    await w.add({ type: 'dir', path: 'blobs', mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n });
    await w.add({ type: 'dir', path: 'blobs/sha256', mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n });
    for (const b of blobs) {
      const file = path.join(work, 'blobs', 'sha256', b);
      const st = await fsp.stat(file);
      const { createReadStream } = await import('node:fs');
      await w.add(
        { type: 'file', path: `blobs/sha256/${b}`, mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, sizeBytes: st.size },
        createReadStream(file) as AsyncIterable<Buffer>,
      );
    }
    await w.finish();
    out.end();
    await once(out, 'finish');
    await fsp.rename(tmpTar, output);
    return { ...result, output };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}
