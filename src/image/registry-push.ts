/**
 * `dmfs push IMAGE REF`: an image's layers, config and manifest to a registry — the
 * image `dmfs save` would write (oci-writer.ts), sent instead of written.
 *
 * Per layer, bottom up (a few layers at once), the first that works:
 * 1. a blob the repository already has (HEAD): the layer's own blob when it was imported
 *    with a known compressed blob (`dmfs.blob_digest` + `dmfs.diff_id`, with its media
 *    type), else the blob an earlier push made of it (`dmfs.pushed_blob`);
 * 2. a cross-repository mount (`POST ?mount=DIGEST&from=REPO`) from another repository
 *    of the same registry: the one the layer was pulled from (`dmfs.source_repository`)
 *    or pushed to before (`dmfs.pushed_blob`);
 * 3. an upload: the layer's changes exported as a gzip tar, streamed to the registry
 *    in chunks (POST, PATCH with Content-Range, PUT ?digest= with the last chunk) while
 *    its digests are computed, so nothing is staged on disk. The result is recorded in
 *    `dmfs.pushed_blob` (a committed layer never changes, so its export is the same
 *    blob again): pushing the same image twice uploads no blob.
 * Then the config (as `dmfs save` builds it, with the diff ids of the blobs used) and an
 * OCI manifest, PUT under the tag.
 *
 * Nothing in the pool changes except the `dmfs.pushed_blob` labels (skipped on a
 * read-only pool). A failed push leaves the registry with whatever blobs were
 * complete, as any client does; the tag moves only with the final manifest PUT.
 */
import { dmfsError, isDmfsError } from '../errors';
import type { LayerInfo, LayerStore } from '../store/layer-store';
import { parseDigest } from './digest';
import { LABELS } from './importer';
import { buildImageConfig, imageChain, layerHistory, MEDIA_TYPES, streamLayerBlob } from './oci-writer';
import { RegistryClient } from './registry-client';
import type { RegistryCredentials } from './registry-credentials';
import { formatRegistryRef, parseRegistryRef, repositoryName, type RegistryRef } from './registry-ref';
import { sha256Hex } from './digest';

export type PushLayerAction = 'exists' | 'mounted' | 'uploaded';
export type PushLayerState = 'waiting' | 'checking' | 'uploading' | PushLayerAction;

export interface PushLayerProgress {
  index: number;
  name: string;
  state: PushLayerState;
  uploadedBytes: number;
  /** Known once the blob is (the size of a blob that exists, or the upload's at its end). */
  sizeBytes: number | null;
}

export interface PushOptions {
  plainHttp?: boolean;
  credentials?: RegistryCredentials | null;
  certsDirs?: readonly string[];
  env?: NodeJS.ProcessEnv;
  /** Bytes per PATCH; default 16 MiB. */
  chunkSizeBytes?: number;
  /** Layers exported and sent at once; default 3. */
  concurrency?: number;
  onLayer?: (layers: readonly PushLayerProgress[]) => void;
}

export interface PushedLayer {
  name: string;
  digest: string;
  diffId: string;
  sizeBytes: number;
  mediaType: string;
  action: PushLayerAction;
}

export interface PushResult {
  image: string;
  reference: string;
  manifestDigest: string;
  configDigest: string;
  layers: PushedLayer[];
  /** Layer and config blobs sent (0 when the registry had them all). */
  blobsUploaded: number;
  bytesUploaded: number;
  durationMs: number;
}

/** What `dmfs.pushed_blob` holds. */
interface PushedBlob {
  digest: string;
  diffId: string;
  sizeBytes: number;
  mediaType: string;
  /** `host/repository` it was pushed to (another repository there mounts it from this one). */
  repository?: string;
}

interface Candidate {
  digest: string;
  diffId: string;
  mediaType: string;
  /** `host/repository` it can be mounted from, on the same registry. */
  mountFrom: string | null;
}

const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;
const DEFAULT_CONCURRENCY = 3;

/** Layer media types a blob imported with can be listed under in an OCI manifest. */
const OCI_LAYER_TYPE: Record<string, string> = {
  [MEDIA_TYPES.layerGzip]: MEDIA_TYPES.layerGzip,
  [MEDIA_TYPES.layerTar]: MEDIA_TYPES.layerTar,
  'application/vnd.oci.image.layer.v1.tar+zstd': 'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': MEDIA_TYPES.layerGzip,
  'application/vnd.docker.image.rootfs.diff.tar': MEDIA_TYPES.layerTar,
};

function isDigest(v: unknown): v is string {
  try {
    parseDigest(v);
    return true;
  } catch {
    return false;
  }
}

function parsePushedBlob(text: string | undefined): PushedBlob | null {
  if (text === undefined) return null;
  try {
    const o = JSON.parse(text) as Partial<PushedBlob>;
    if (isDigest(o.digest) && isDigest(o.diffId) && typeof o.sizeBytes === 'number' && typeof o.mediaType === 'string') return o as PushedBlob;
  } catch {
    /* an unreadable record is no record */
  }
  return null;
}

/** Blobs that stand for this layer, best first (see the file comment). */
function candidatesOf(l: LayerInfo, ref: RegistryRef): Candidate[] {
  const out: Candidate[] = [];
  const prefix = `${ref.registry}/`;
  const mountable = (from: string | undefined): string | null =>
    from !== undefined && from.startsWith(prefix) && from !== repositoryName(ref) ? from.slice(prefix.length) : null;
  const blob = l.labels[LABELS.blobDigest];
  const diffId = l.labels[LABELS.diffId];
  const type = l.labels[LABELS.mediaType] !== undefined ? OCI_LAYER_TYPE[l.labels[LABELS.mediaType]] : undefined;
  if (isDigest(blob) && isDigest(diffId) && type !== undefined) {
    out.push({ digest: blob, diffId, mediaType: type, mountFrom: mountable(l.labels[LABELS.sourceRepository]) });
  }
  const pushed = parsePushedBlob(l.labels[LABELS.pushedBlob]);
  if (pushed && !out.some((c) => c.digest === pushed.digest)) out.push({ digest: pushed.digest, diffId: pushed.diffId, mediaType: pushed.mediaType, mountFrom: mountable(pushed.repository) });
  return out;
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  let failed: unknown = null;
  const worker = async (): Promise<void> => {
    while (failed === null && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i], i);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed !== null) throw failed;
  return results;
}

export async function pushImage(store: LayerStore, imageName: string, refText: string, opts: PushOptions = {}): Promise<PushResult> {
  const started = Date.now();
  const ref = parseRegistryRef(refText);
  if (ref.digest !== null) throw dmfsError('USAGE', `push to a tag, not a digest (${refText}): the registry names the manifest by its digest itself`);
  const tag = ref.tag ?? 'latest';
  const chain = await imageChain(store, imageName);
  const chunkBytes = Math.max(64 * 1024, opts.chunkSizeBytes ?? DEFAULT_CHUNK_BYTES);
  const client = new RegistryClient({
    registry: ref.registry, repository: ref.repository, plainHttp: opts.plainHttp, credentials: opts.credentials ?? null, certsDirs: opts.certsDirs, env: opts.env,
  });
  const repo = ref.repository;
  const progress: PushLayerProgress[] = chain.map((l, index) => ({ index, name: l.name, state: 'waiting', uploadedBytes: 0, sizeBytes: null }));
  const changed = (): void => opts.onLayer?.(progress);
  let blobsUploaded = 0;
  let bytesUploaded = 0;

  /** Uploads what `produce` writes, in chunks; returns the digest and size `produce` computed. */
  const upload = async <T extends { digest: string }>(
    location: string, produce: (sink: (chunk: Buffer) => Promise<void>) => Promise<T>, onBytes: (n: number) => void,
  ): Promise<T> => {
    let loc = location;
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    // One PATCH in flight while the next chunk is produced (chunks go in order: each PATCH
    // needs the Location the previous one returned). Memory: two chunks.
    let inFlight: Promise<void> = Promise.resolve();
    const flush = async (): Promise<void> => {
      const chunk = Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      await inFlight;
      inFlight = (async () => {
        loc = await client.uploadChunk(repo, loc, chunk, offset);
        offset += chunk.length;
        bytesUploaded += chunk.length;
        onBytes(offset);
      })();
      // A failed PATCH surfaces at the next flush or at the end; keep it from going unhandled meanwhile.
      inFlight.catch(() => undefined);
    };
    let result: T;
    try {
      result = await produce(async (chunk) => {
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= chunkBytes) await flush();
      });
    } finally {
      await inFlight.catch(() => undefined);
    }
    await inFlight;
    const last = Buffer.concat(pending, pendingBytes);
    await client.finishUpload(repo, loc, result.digest, last);
    bytesUploaded += last.length;
    onBytes(offset + last.length);
    blobsUploaded++;
    return result;
  };

  try {
    const layers = await mapLimit(chain, opts.concurrency ?? DEFAULT_CONCURRENCY, async (l, i): Promise<PushedLayer> => {
      const p = progress[i];
      p.state = 'checking';
      changed();
      let uploadAt: string | null = null;
      for (const c of candidatesOf(l, ref)) {
        let size = await client.statBlob(repo, c.digest, [`repository:${repo}:pull,push`]);
        let action: PushLayerAction = 'exists';
        if (size === null && c.mountFrom !== null && uploadAt === null) {
          const started = await client.startUpload(repo, { digest: c.digest, from: c.mountFrom });
          if (started.mounted) {
            action = 'mounted';
            size = await client.statBlob(repo, c.digest, [`repository:${repo}:pull,push`]);
          } else uploadAt = started.location; // Not mounted: the registry opened an upload instead.
        }
        if (size !== null && size >= 0) {
          Object.assign(p, { state: action, sizeBytes: size });
          changed();
          return { name: l.name, digest: c.digest, diffId: c.diffId, sizeBytes: size, mediaType: c.mediaType, action };
        }
      }
      p.state = 'uploading';
      changed();
      const location = uploadAt ?? (await client.startUpload(repo)).location;
      const blob = await upload(location, (sink) => streamLayerBlob(store, l.name, 'gzip', sink), (n) => {
        p.uploadedBytes = n;
        changed();
      });
      Object.assign(p, { state: 'uploaded', sizeBytes: blob.sizeBytes });
      changed();
      const record: PushedBlob = { digest: blob.digest, diffId: blob.diffId, sizeBytes: blob.sizeBytes, mediaType: MEDIA_TYPES.layerGzip, repository: repositoryName(ref) };
      await rememberPushedBlob(store, l.name, record);
      return { name: l.name, digest: record.digest, diffId: record.diffId, sizeBytes: record.sizeBytes, mediaType: record.mediaType, action: 'uploaded' };
    });

    const history = chain.flatMap((l) => layerHistory(l));
    const config = await buildImageConfig(store, imageName, chain, layers.map((l) => l.diffId), history);
    const configBody = Buffer.from(JSON.stringify(config));
    const configDigest = `sha256:${sha256Hex(configBody)}`;
    if ((await client.statBlob(repo, configDigest, [`repository:${repo}:pull,push`])) === null) {
      const { location } = await client.startUpload(repo);
      await upload(location, async (sink) => {
        await sink(configBody);
        return { digest: configDigest };
      }, () => undefined);
    }
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: { mediaType: MEDIA_TYPES.config, digest: configDigest, size: configBody.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.sizeBytes })),
    };
    const manifestBody = Buffer.from(JSON.stringify(manifest));
    const manifestDigest = `sha256:${sha256Hex(manifestBody)}`;
    const answered = await client.putManifest(repo, tag, manifestBody, MEDIA_TYPES.manifest);
    if (answered !== null && answered !== manifestDigest) {
      throw dmfsError('REGISTRY_ERROR', `${ref.registry} stored the manifest as ${answered}, but its digest is ${manifestDigest}`);
    }
    return {
      image: imageName, reference: formatRegistryRef({ ...ref, tag }), manifestDigest, configDigest, layers,
      blobsUploaded, bytesUploaded, durationMs: Date.now() - started,
    };
  } finally {
    await client.close();
  }
}

/** Records the blob a push made of a layer; a pool that cannot take the label (read-only) just does not remember. */
async function rememberPushedBlob(store: LayerStore, name: string, record: PushedBlob): Promise<void> {
  try {
    const info = await store.getLayer(name);
    const text = JSON.stringify(record);
    if (info.labels[LABELS.pushedBlob] !== text) await store.setLabels(name, { ...info.labels, [LABELS.pushedBlob]: text });
  } catch (err) {
    if (!isDmfsError(err, 'POOL_READ_ONLY') && !isDmfsError(err, 'READ_ONLY_LAYER')) throw err;
  }
}
