/**
 * `dmfs import`: an image (or one layer, or a directory) into a chain of image layers.
 *
 * Naming (what `dmfs ls` shows):
 * - the top layer of an imported image carries the image name (`--name`, else the
 *   source's own: docker RepoTags[0], the OCI `io.containerd.image.name` or
 *   `<layout dir>:<ref.name>`, else the file name);
 * - every other layer is named `layer-<first 12 hex of its OCI ChainID>`;
 * - every imported layer has labels `dmfs.diff_id` (sha256 of its uncompressed tar),
 *   `dmfs.chain_id` (OCI ChainID: the layer and all below it), and where known
 *   `dmfs.blob_digest` / `dmfs.media_type` / `dmfs.history` (its config history
 *   entries); the named top layer also `dmfs.image.config` (the image config without
 *   rootfs and history), which `dmfs save` writes back.
 * Reuse: a layer whose ChainID is already in the pool (committed) is not imported
 * again; a diff id alone is not enough, since a layer's content means something only
 * on top of the same layers below.
 * Re-import of a name that points at another chain moves the name (as `docker tag`
 * does): the old top layer gets its `layer-<chain>` name back. When the whole chain
 * is present under another image name, the new name is an empty image layer on top of
 * it, labelled `dmfs.tag_of` (saved without an extra layer).
 *
 * Atomicity: a failure (corrupt or hostile input, digest mismatch, full pool, ...)
 * removes every layer this import created and undoes its renames, so the pool is as
 * it was. Digests are checked while the data streams; a mismatch found at the end of a
 * layer still removes everything.
 */
import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../errors';
import type { LayerInfo, LayerStore } from '../store/layer-store';
import { ByteReader } from './byte-reader';
import { decompress } from './decompress';
import { DigestTap, chainIds, parseDigest } from './digest';
import { walkDirectory } from './dir-source';
import { ImageSource, LayerSource, openImageSource, SourceFormat } from './image-source';
import { ApplyStats, LayerApplier } from './layer-applier';
import { readTar, TarItem } from './tar-reader';

export const LABELS = {
  diffId: 'dmfs.diff_id',
  chainId: 'dmfs.chain_id',
  blobDigest: 'dmfs.blob_digest',
  mediaType: 'dmfs.media_type',
  history: 'dmfs.history',
  config: 'dmfs.image.config',
  source: 'dmfs.source',
  tagOf: 'dmfs.tag_of',
  /** `host/repository` a pulled layer's blob came from (push mounts it from there). */
  sourceRepository: 'dmfs.source_repository',
  /** The blob an earlier push made of this layer: JSON `PushedBlob` (registry-push.ts). */
  pushedBlob: 'dmfs.pushed_blob',
} as const;

const MAX_CONFIG_LABEL_BYTES = 1 << 20;
const MAX_HISTORY_LABEL_BYTES = 64 * 1024;

export interface ImportProgress {
  layersDone: number;
  layersTotal: number;
  /** Stored (compressed) bytes read so far over all layers. */
  bytesDone: number;
  /** Sum of the stored layer sizes, when known. */
  bytesTotal: number | null;
  /** Entries applied in the current layer. */
  entriesDone: number;
}

export interface ImportOptions {
  /** Image name; default the source's own (see above). */
  name?: string;
  onProgress?: (p: ImportProgress) => void;
  /**
   * One line about input accepted with a defect (a layer tar without end-of-archive
   * blocks), at most once per layer; the import goes on. The CLI prints it on stderr.
   */
  onWarning?: (message: string) => void;
  /** Per-layer cap on uncompressed tar bytes; default twice the layer size limit plus 1 GiB. */
  maxLayerTarBytes?: number;
  /** Largest single file; default the layer size limit. */
  maxFileBytes?: number;
  tmpDir?: string;
}

export interface ImportedLayer {
  name: string;
  diffId: string | null;
  chainId: string | null;
  reused: boolean;
  entries: number;
  contentBytes: number;
  blobBytes: number;
}

export interface ImportResult {
  name: string;
  format: SourceFormat;
  layers: ImportedLayer[];
  /** True when the whole chain was already in the pool. */
  alreadyPresent: boolean;
  bytesRead: number;
  durationMs: number;
}

export function layerNameForChain(chainId: string): string {
  return `layer-${parseDigest(chainId).hex.slice(0, 12)}`;
}

/** History entries of the config, grouped by the non-empty layer they belong to. */
function historyPerLayer(config: Record<string, unknown> | null, layerCount: number): (unknown[] | null)[] {
  const out: (unknown[] | null)[] = new Array(layerCount).fill(null);
  const history = config?.history;
  if (!Array.isArray(history)) return out;
  const nonEmpty = history.filter((h) => !(typeof h === 'object' && h !== null && (h as { empty_layer?: unknown }).empty_layer === true));
  if (nonEmpty.length !== layerCount) return out; // Inconsistent history: keep none rather than mislabel.
  let layer = 0;
  let pending: unknown[] = [];
  for (const h of history) {
    pending.push(h);
    const empty = typeof h === 'object' && h !== null && (h as { empty_layer?: unknown }).empty_layer === true;
    if (!empty) {
      out[layer++] = pending;
      pending = [];
    }
  }
  if (pending.length > 0 && layerCount > 0) out[layerCount - 1] = [...(out[layerCount - 1] ?? []), ...pending];
  return out;
}

function configLabel(config: Record<string, unknown> | null): string | null {
  if (!config) return null;
  const { rootfs: _rootfs, history: _history, ...rest } = config;
  const text = JSON.stringify(rest);
  return Buffer.byteLength(text) <= MAX_CONFIG_LABEL_BYTES ? text : null;
}

async function* skipBytes(source: AsyncIterable<Buffer>, n: number): AsyncGenerator<Buffer> {
  let left = n;
  for await (const chunk of source) {
    if (left >= chunk.length) {
      left -= chunk.length;
      continue;
    }
    yield left > 0 ? chunk.subarray(left) : chunk;
    left = 0;
  }
}

async function findFree(store: LayerStore, want: string): Promise<string> {
  for (let i = 0; ; i++) {
    const candidate = i === 0 ? want : `${want}-${i + 1}`;
    try {
      await store.getLayer(candidate);
    } catch (err) {
      if (isDmfsError(err, 'LAYER_NOT_FOUND')) return candidate;
      throw err;
    }
  }
}

async function getLayerOrNull(store: LayerStore, name: string): Promise<LayerInfo | null> {
  try {
    return await store.getLayer(name);
  } catch (err) {
    if (isDmfsError(err, 'LAYER_NOT_FOUND')) return null;
    throw err;
  }
}

export class Importer {
  private readonly created: string[] = [];
  private readonly renames: { from: string; to: string }[] = [];
  private bytesDone = 0;
  /** Reports progress with the current layer and entry counts. */
  private tick: () => void = () => {};

  constructor(private readonly store: LayerStore, private readonly opts: ImportOptions = {}) {}

  async run(spec: string): Promise<ImportResult> {
    const started = Date.now();
    return this.runSource(await openImageSource(spec, { tmpDir: this.opts.tmpDir }), spec, started);
  }

  /** Imports from an opened source (a registry's, say), which it closes; `spec` names it in messages. */
  async runSource(src: ImageSource, spec: string, started = Date.now()): Promise<ImportResult> {
    try {
      return await this.importFrom(src, spec, started);
    } catch (err) {
      await this.rollback();
      throw err;
    } finally {
      await src.close();
    }
  }

  private defaultName(src: ImageSource, spec: string): string {
    if (this.opts.name) return this.opts.name;
    if (src.defaultName) return src.defaultName;
    const base = path.basename(path.resolve(src.directory ?? spec)).replace(/^[^A-Za-z0-9]+/, '');
    if (base.length > 0) return base;
    throw dmfsError('USAGE', `cannot derive an image name from ${spec}: give --name`);
  }

  private async importFrom(src: ImageSource, spec: string, started: number): Promise<ImportResult> {
    const name = this.defaultName(src, spec);
    const named = await getLayerOrNull(this.store, name);
    if (named && named.kind !== 'image') {
      throw dmfsError('LAYER_EXISTS', `${name} is a ${named.kind} layer, not an image: choose another --name`);
    }
    const namedChain = named ? named.labels[LABELS.chainId] ?? named.labels[LABELS.tagOf] ?? null : null;
    if (named && namedChain === null) {
      throw dmfsError('LAYER_EXISTS', `layer ${name} exists and was not imported: choose another --name`);
    }

    const total = src.format === 'directory' ? 1 : src.layers.length;
    const knownDiffIds = src.layers.every((l) => l.diffId !== null) ? src.layers.map((l) => l.diffId as string) : null;
    const chains = knownDiffIds ? chainIds(knownDiffIds) : null;
    const byChain = new Map<string, LayerInfo>();
    for (const l of await this.store.listLayers()) {
      const c = l.labels[LABELS.chainId];
      if (l.kind === 'image' && l.state === 'committed' && c !== undefined && !byChain.has(c)) byChain.set(c, l);
    }
    const history = historyPerLayer(src.config, src.layers.length);
    const bytesTotal = src.layers.every((l) => l.blobSizeBytes !== null)
      ? src.layers.reduce((s, l) => s + (l.blobSizeBytes ?? 0), 0) : null;
    let curLayers = 0;
    let curEntries = 0;
    const report = (layersDone: number, entriesDone: number): void => {
      curLayers = layersDone;
      curEntries = entriesDone;
      this.opts.onProgress?.({ layersDone, layersTotal: total, bytesDone: this.bytesDone, bytesTotal, entriesDone });
    };
    this.tick = () => report(curLayers, curEntries);
    if (chains && src.prepare) src.prepare(src.layers.filter((_, i) => !byChain.has(chains[i])));
    else src.prepare?.(src.layers);

    const layers: ImportedLayer[] = [];
    const toSeal: string[] = [];
    let parent = 'base';
    let parentChain: string | null = null;
    for (let i = 0; i < total; i++) {
      const ls: LayerSource | null = src.format === 'directory' ? null : src.layers[i];
      const chain = chains ? chains[i] : null;
      const reuse = chain !== null ? byChain.get(chain) : undefined;
      if (reuse) {
        layers.push({ name: reuse.name, diffId: knownDiffIds![i], chainId: chain, reused: true, entries: 0, contentBytes: 0, blobBytes: 0 });
        parent = reuse.name;
        parentChain = chain;
        this.bytesDone += ls?.blobSizeBytes ?? 0;
        report(i + 1, 0);
        continue;
      }
      const isTop = i === total - 1;
      const labels: Record<string, string> = {};
      if (ls?.diffId) labels[LABELS.diffId] = ls.diffId;
      if (chain) labels[LABELS.chainId] = chain;
      if (ls?.blobDigest) labels[LABELS.blobDigest] = ls.blobDigest;
      if (ls?.mediaType) labels[LABELS.mediaType] = ls.mediaType;
      const h = history[i];
      if (h) {
        const text = JSON.stringify(h);
        if (Buffer.byteLength(text) <= MAX_HISTORY_LABEL_BYTES) labels[LABELS.history] = text;
      }
      labels[LABELS.source] = src.format;
      if (ls?.labels) Object.assign(labels, ls.labels);
      const layerName = isTop && !named
        ? name
        : await findFree(this.store, chain ? layerNameForChain(chain) : `import-${process.pid}-${Date.now().toString(36)}`);
      await this.store.createLayer(layerName, { parent, kind: 'image', building: true, labels });
      this.created.push(layerName);

      const fs = await this.store.openLayer(layerName);
      let result: { stats: ApplyStats; diffId: string | null; blobBytes: number };
      try {
        result = await this.applyLayer(fs, ls, src, (n) => report(i, n));
        await fs.fsync();
      } finally {
        await fs.close();
      }
      let chainId = chain;
      if (result.diffId && !labels[LABELS.diffId]) {
        // Learnt while reading (a single layer): record it and name the layer by it.
        chainId = parentChain === null ? result.diffId : chainIds([parentChain, result.diffId])[1];
        // chainIds([a, b])[1] = sha256(a + " " + b): the parent's chain id stands in for its diff id list.
        await this.store.setLabels(layerName, { ...labels, [LABELS.diffId]: result.diffId, [LABELS.chainId]: chainId });
      }
      // Sealed together at the end, bottom-up: a killed import leaves only building layers, which the next open removes.
      toSeal.push(layerName);
      layers.push({
        name: layerName, diffId: result.diffId ?? ls?.diffId ?? null, chainId, reused: false,
        entries: result.stats.entries, contentBytes: result.stats.contentBytes, blobBytes: result.blobBytes,
      });
      parent = layerName;
      parentChain = chainId;
      report(i + 1, result.stats.entries);
    }

    // Point the name at the top layer.
    const top = parent;
    for (const layerName of toSeal) await this.store.sealLayer(this.currentName(layerName));
    const topInfo = await this.store.getLayer(top);
    let finalName = top;
    let alreadyPresent = false;
    if (top !== name) {
      if (named && namedChain === topInfo.labels[LABELS.chainId]) {
        alreadyPresent = true; // The name already points at this very chain.
        finalName = name;
      } else {
        if (named) {
          // Move the name: the old image keeps its layers under its chain name.
          const old = named.labels[LABELS.tagOf] !== undefined ? null : named.labels[LABELS.chainId];
          if (old === null) {
            if (named.children.length > 0) throw dmfsError('LAYER_HAS_CHILDREN', `${name} has children; cannot move the name`);
            await this.store.removeLayer(name);
          } else {
            const to = await findFree(this.store, layerNameForChain(old));
            await this.rename(name, to);
          }
        }
        const topChain = topInfo.labels[LABELS.chainId];
        const unnamed = topChain !== undefined && (top === layerNameForChain(topChain) || top.startsWith(`${layerNameForChain(topChain)}-`));
        if (this.created.includes(top) || unnamed) {
          await this.rename(top, name);
        } else {
          // The chain is in the pool under another image name: tag it with an empty layer.
          await this.store.createLayer(name, {
            parent: top, kind: 'image', building: true,
            labels: { [LABELS.tagOf]: topChain ?? '', [LABELS.source]: src.format },
          });
          this.created.push(name);
          await this.store.sealLayer(name);
        }
        finalName = name;
        if (layers.length > 0 && layers[layers.length - 1].name === top) layers[layers.length - 1].name = name;
      }
    }
    if (layers.length > 0 && layers.every((l) => l.reused)) alreadyPresent = true;
    const cfg = configLabel(src.config);
    if (cfg !== null) {
      const info = await this.store.getLayer(finalName);
      if (info.labels[LABELS.config] !== cfg) await this.store.setLabels(finalName, { ...info.labels, [LABELS.config]: cfg });
    }
    return {
      name: finalName, format: src.format, layers, alreadyPresent,
      bytesRead: this.bytesDone, durationMs: Date.now() - started,
    };
  }

  /** The name a layer created by this import has now (renames follow it). */
  private currentName(name: string): string {
    let cur = name;
    for (const r of this.renames) if (r.from === cur) cur = r.to;
    return cur;
  }

  private async rename(from: string, to: string): Promise<void> {
    await this.store.renameLayer(from, to);
    this.renames.push({ from, to });
    const i = this.created.indexOf(from);
    if (i >= 0) this.created[i] = to;
  }

  private async applyLayer(
    fs: Awaited<ReturnType<LayerStore['openLayer']>>,
    ls: LayerSource | null,
    src: ImageSource,
    onEntry: (n: number) => void,
  ): Promise<{ stats: ApplyStats; diffId: string | null; blobBytes: number }> {
    const applier = new LayerApplier(fs, { maxFileBytes: this.opts.maxFileBytes, onEntry });
    if (ls === null) {
      await applier.apply(walkDirectory(src.directory!));
      return { stats: applier.stats, diffId: null, blobBytes: 0 };
    }
    const blobAlg = ls.blobDigest ? parseDigest(ls.blobDigest).algorithm : 'sha256';
    // The stored bytes are hashed when their digest is to be checked and the diff id check
    // does not already prove it (an uncompressed blob: its digest is its diff id).
    const checkBlobDigest = ls.blobDigest !== null && ls.blobDigest !== ls.diffId;
    const rawTap = new DigestTap(blobAlg, checkBlobDigest);
    const self = this;
    async function* counted(): AsyncGenerator<Buffer> {
      for await (const chunk of ls!.open()) {
        rawTap.update(chunk);
        self.bytesDone += chunk.length;
        self.tick();
        if (ls!.blobSizeBytes !== null && rawTap.sizeBytes > ls!.blobSizeBytes) {
          throw dmfsError('BAD_IMAGE', `${ls!.description}: more bytes than the ${ls!.blobSizeBytes} declared`);
        }
        yield chunk;
      }
    }
    const maxTar = this.opts.maxLayerTarBytes ?? 2 * fs.sizeLimitBytes + (1 << 30);
    const diffTap = new DigestTap();
    const reader = ByteReader.from(diffTap.tap(decompress(counted(), { maxOutputBytes: maxTar })));
    try {
      const onWarning = (m: string): void => this.opts.onWarning?.(`${ls.description}: ${m}`);
      await applier.apply(readTar(reader, { onWarning }) as AsyncIterable<TarItem>);
      await reader.drain(); // Bytes after the end-of-archive blocks count in the diff id.
    } finally {
      await reader.close();
    }
    if (ls.blobSizeBytes !== null && rawTap.sizeBytes < ls.blobSizeBytes) {
      // The decompressor stopped at the end of the compressed stream: hash the rest of the blob.
      for await (const chunk of ls.openAt ? ls.openAt(rawTap.sizeBytes) : skipBytes(ls.open(), rawTap.sizeBytes)) {
        rawTap.update(chunk);
        this.bytesDone += chunk.length;
      }
    }
    if (ls.blobSizeBytes !== null && rawTap.sizeBytes !== ls.blobSizeBytes) {
      throw dmfsError('BAD_IMAGE', `${ls.description}: ${rawTap.sizeBytes} bytes, expected ${ls.blobSizeBytes}`);
    }
    if (checkBlobDigest && rawTap.digest() !== ls.blobDigest) {
      throw dmfsError('BAD_IMAGE', `${ls.description}: blob digest mismatch (expected ${ls.blobDigest}, got ${rawTap.digest()})`);
    }
    const diffId = diffTap.digest();
    if (ls.diffId && diffId !== ls.diffId) {
      const what = ls.blobDigest === ls.diffId ? 'blob digest' : 'diff id';
      throw dmfsError('BAD_IMAGE', `${ls.description}: ${what} mismatch (expected ${ls.diffId}, got ${diffId})`);
    }
    return { stats: applier.stats, diffId, blobBytes: rawTap.sizeBytes };
  }

  /** Removes what this import created and undoes its renames, newest first. */
  private async rollback(): Promise<void> {
    const created = new Set(this.created);
    for (const name of [...this.created].reverse()) {
      try {
        await this.store.removeLayer(name);
      } catch {
        // A layer that cannot go now (e.g. open elsewhere) is deferred by the store.
      }
    }
    for (const r of [...this.renames].reverse()) {
      if (created.has(r.to)) continue;
      try {
        await this.store.renameLayer(r.to, r.from);
      } catch {
        // Best effort: nothing else to undo it with.
      }
    }
  }
}

export async function importImage(store: LayerStore, spec: string, opts: ImportOptions = {}): Promise<ImportResult> {
  return new Importer(store, opts).run(spec);
}

/** importImage from an opened source, which it closes. */
export async function importFromSource(store: LayerStore, src: ImageSource, spec: string, opts: ImportOptions = {}): Promise<ImportResult> {
  return new Importer(store, opts).runSource(src, spec);
}
