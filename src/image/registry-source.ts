/**
 * An image in a registry as an import source (`ImageSource`): the importer applies and
 * verifies it exactly as it does a local layout, while the layers stream in.
 *
 * Resolution: the manifest for the tag or digest (Accept: OCI index and manifest,
 * Docker manifest list and manifest); an index picks the manifest for the platform
 * (default linux and this host's architecture; `variant` matched when given); then the
 * config blob. Every document is checked against its digest (the reference's, the
 * descriptor's, or the registry's `Docker-Content-Digest`), and layers against the
 * manifest while they stream (the importer checks blob digest, size and diff id).
 *
 * Layers: fetched only when the importer asks for them (`prepare`: layers whose ChainID
 * is in the pool are never fetched), a few at a time ahead of the one being applied
 * (`LayerPrefetch`), each resumed with a Range request when its connection breaks.
 */
import { createHash } from 'node:crypto';
import { dmfsError } from '../errors';
import { parseDigest } from './digest';
import { asDescriptor, asObject, hostArch, type Descriptor, type ImageSource, type LayerSource } from './image-source';
import { LABELS } from './importer';
import { LayerPrefetch } from './layer-prefetch';
import { MANIFEST_MEDIA_TYPES as MT, type RegistryClient } from './registry-client';
import { familiarName, repositoryName, type RegistryRef } from './registry-ref';

const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
/** How deep index → index → manifest may nest. */
const MAX_INDEX_DEPTH = 4;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface RegistryLayerEvent {
  index: number;
  digest: string;
  sizeBytes: number;
  downloadedBytes: number;
  /** Times the download resumed after a broken connection. */
  resumes: number;
}

export interface RegistrySourceOptions {
  platform?: Platform;
  /** True when the user named the platform (a single-platform image of another one is then refused). */
  platformGiven?: boolean;
  /** Parallel layer downloads; default 3. */
  concurrency?: number;
  maxBufferedBytes?: number;
  onLayerBytes?: (e: RegistryLayerEvent) => void;
}

export interface RegistryImageSource extends ImageSource {
  ref: RegistryRef;
  /** The platform manifest's media type. */
  manifestMediaType: string;
  /** Layers `prepare` asked for (the rest were in the pool). */
  fetched: ReadonlySet<number>;
}

export function hostPlatform(): Platform {
  return { os: 'linux', architecture: hostArch(), ...(process.arch === 'arm64' ? { variant: 'v8' } : {}) };
}

/** Parses `OS/ARCH[/VARIANT]` (`--platform`). */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/.test(p))) {
    throw dmfsError('USAGE', `--platform takes OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7 (got ${JSON.stringify(text)})`);
  }
  return { os: parts[0], architecture: parts[1], ...(parts[2] ? { variant: parts[2] } : {}) };
}

export function formatPlatform(p: { os?: string; architecture?: string; variant?: string }): string {
  return [p.os ?? '?', p.architecture ?? '?', ...(p.variant ? [p.variant] : [])].join('/');
}

/** `os/architecture[/variant]` of an image config. */
export function configPlatform(config: Record<string, unknown>): string {
  const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  return formatPlatform({ os: str(config.os), architecture: str(config.architecture), variant: str(config.variant) });
}

function parseJsonDoc(body: Buffer, what: string): Record<string, unknown> {
  try {
    return asObject(JSON.parse(body.toString('utf8')), what);
  } catch (err) {
    if ((err as { code?: string }).code === 'BAD_IMAGE') throw err;
    throw dmfsError('BAD_IMAGE', `${what} is not valid JSON`, err);
  }
}

function digestOf(body: Buffer, algorithm: 'sha256' | 'sha512' = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(body).digest('hex')}`;
}

function checkDigest(body: Buffer, want: string, what: string): void {
  const got = digestOf(body, parseDigest(want).algorithm);
  if (got !== want) throw dmfsError('BAD_IMAGE', `${what}: digest mismatch (expected ${want}, got ${got})`);
}

/** Variants that stand for each other when one side leaves it out (arm64 is v8 unless said). */
function variantMatches(want: string | undefined, have: string | undefined, arch: string): boolean {
  if (want === undefined) return true;
  const norm = (v: string | undefined): string | undefined => (v === undefined && arch === 'arm64' ? 'v8' : v);
  return norm(want) === norm(have);
}

function pickPlatform(manifests: Descriptor[], want: Platform, where: string): Descriptor {
  const candidates = manifests.filter((d) => d.platform && (d.platform.os ?? '') === want.os && d.platform.architecture === want.architecture);
  const exact = candidates.filter((d) => variantMatches(want.variant, d.platform?.variant, want.architecture));
  const pick = exact[0] ?? (want.variant === undefined ? candidates[0] : undefined);
  if (pick) return pick;
  const have = manifests.map((d) => (d.platform ? formatPlatform(d.platform) : 'unknown')).filter((p) => p !== 'unknown/unknown');
  throw dmfsError('NOT_FOUND', `${where} has no image for ${formatPlatform(want)} (it has: ${have.join(', ') || 'none'}); pick one with --platform OS/ARCH`);
}

const LAYER_TYPES_REFUSED = /(foreign|nondistributable)|\+encrypted/;

/** Opens the image `ref` names; close() cancels downloads and the client's connections are the caller's. */
export async function openRegistrySource(client: RegistryClient, ref: RegistryRef, opts: RegistrySourceOptions = {}): Promise<RegistryImageSource> {
  const repo = ref.repository;
  const where = repositoryName(ref);
  const reference = ref.digest ?? ref.tag ?? 'latest';
  const want = opts.platform ?? hostPlatform();

  const first = await client.getManifest(repo, reference);
  if (first === null) throw await unknownManifest(client, ref);
  if (ref.digest !== null) checkDigest(first.body, ref.digest, `manifest ${where}@${ref.digest}`);
  else if (first.digest !== null && /^sha256:[a-f0-9]{64}$/.test(first.digest)) checkDigest(first.body, first.digest, `manifest ${where}:${reference}`);

  let body = first.body;
  let doc = parseJsonDoc(body, `manifest ${where}:${reference}`);
  let mediaType = (typeof doc.mediaType === 'string' ? doc.mediaType : null) ?? first.mediaType ?? '';
  let manifestDigest = ref.digest ?? digestOf(body);
  for (let depth = 0; ; depth++) {
    const isIndex = mediaType === MT.ociIndex || mediaType === MT.dockerList || (mediaType === '' && Array.isArray(doc.manifests));
    if (!isIndex) break;
    if (depth >= MAX_INDEX_DEPTH) throw dmfsError('BAD_IMAGE', `${where}: image indexes nest too deeply`);
    const subs = (Array.isArray(doc.manifests) ? doc.manifests : []).map((m, i) => asDescriptor(m, `index manifests[${i}]`));
    const pick = pickPlatform(subs, want, `${where}:${reference}`);
    const next = await client.getManifest(repo, pick.digest);
    if (next === null) throw dmfsError('NOT_FOUND', `${where}: the index names manifest ${pick.digest} for ${formatPlatform(want)}, but the registry does not have it`);
    checkDigest(next.body, pick.digest, `manifest ${pick.digest}`);
    if (next.body.length !== pick.size) throw dmfsError('BAD_IMAGE', `manifest ${pick.digest} is ${next.body.length} bytes, the index says ${pick.size}`);
    body = next.body;
    doc = parseJsonDoc(body, `manifest ${pick.digest}`);
    mediaType = (typeof doc.mediaType === 'string' ? doc.mediaType : null) ?? pick.mediaType ?? next.mediaType ?? '';
    manifestDigest = pick.digest;
  }
  if (mediaType === '' && doc.schemaVersion === 2 && typeof doc.config === 'object') mediaType = MT.ociManifest;
  if (mediaType !== MT.ociManifest && mediaType !== MT.dockerManifest) {
    throw dmfsError('NOT_SUPPORTED', `${where}:${reference} is a ${mediaType || `schema ${String(doc.schemaVersion)}`} manifest; dmfs pulls OCI and Docker v2 (schema 2) images`);
  }

  const configDesc = asDescriptor(doc.config, 'manifest config');
  if (configDesc.size > MAX_CONFIG_BYTES) throw dmfsError('BAD_IMAGE', `${where}: image config is ${configDesc.size} bytes, more than the ${MAX_CONFIG_BYTES} allowed`);
  const configBody = await client.getBlob(repo, configDesc.digest, MAX_CONFIG_BYTES);
  checkDigest(configBody, configDesc.digest, `image config ${configDesc.digest}`);
  const config = parseJsonDoc(configBody, 'image config');
  if (opts.platformGiven && (config.os !== want.os || config.architecture !== want.architecture)) {
    throw dmfsError('NOT_FOUND', `${where}:${reference} is a ${configPlatform(config)} image, not ${formatPlatform(want)}`);
  }
  const rootfs = asObject(config.rootfs, 'config rootfs');
  if (!Array.isArray(rootfs.diff_ids)) throw dmfsError('BAD_IMAGE', 'config rootfs.diff_ids is not a list');
  const diffIds = rootfs.diff_ids.map((d, i) => {
    parseDigest(d, `diff_ids[${i}]`);
    return d as string;
  });
  if (!Array.isArray(doc.layers)) throw dmfsError('BAD_IMAGE', 'manifest has no layers list');
  const layerDescs = doc.layers.map((l, i) => asDescriptor(l, `manifest layers[${i}]`));
  if (layerDescs.length !== diffIds.length) {
    throw dmfsError('BAD_IMAGE', `manifest lists ${layerDescs.length} layers but the config ${diffIds.length} diff ids`);
  }
  for (const d of layerDescs) {
    if (d.mediaType !== undefined && LAYER_TYPES_REFUSED.test(d.mediaType)) {
      throw dmfsError('NOT_SUPPORTED', `${where}: layer ${d.digest} is ${d.mediaType}; dmfs pulls distributable, unencrypted layers only`);
    }
  }

  const resumes = new Map<number, number>();
  const emit = (index: number, downloadedBytes: number): void => {
    const d = layerDescs[index];
    opts.onLayerBytes?.({ index, digest: d.digest, sizeBytes: d.size, downloadedBytes, resumes: resumes.get(index) ?? 0 });
  };
  const readFrom = (index: number, offsetBytes: number): AsyncIterable<Buffer> =>
    client.readBlob(repo, layerDescs[index].digest, layerDescs[index].size, offsetBytes, () => resumes.set(index, (resumes.get(index) ?? 0) + 1));
  const prefetch = new LayerPrefetch(new Map(layerDescs.map((_, i) => [i, () => readFrom(i, 0)])), {
    concurrency: opts.concurrency, maxBufferedBytes: opts.maxBufferedBytes, onBytes: emit,
  });
  const fetched = new Set<number>();
  const opened = new Set<number>();
  const layers: LayerSource[] = layerDescs.map((d, i) => ({
    blobDigest: d.digest,
    blobSizeBytes: d.size,
    diffId: diffIds[i],
    mediaType: d.mediaType ?? null,
    description: `${where}@${d.digest}`,
    labels: { [LABELS.sourceRepository]: where },
    // The first open takes the prefetched stream; a later one (a re-read) fetches again.
    open: () => {
      fetched.add(i);
      if (opened.has(i)) return readFrom(i, 0);
      opened.add(i);
      return prefetch.stream(i);
    },
    openAt: (offsetBytes: number) => readFrom(i, offsetBytes),
  }));
  return {
    format: 'registry',
    ref,
    layers,
    config,
    configDigest: configDesc.digest,
    manifestDigest,
    manifestMediaType: mediaType,
    defaultName: familiarName(ref),
    directory: null,
    fetched,
    prepare: (needed) => {
      const keys = needed.map((l) => layers.indexOf(l)).filter((i) => i >= 0);
      for (const k of keys) fetched.add(k);
      prefetch.schedule(keys);
    },
    close: async () => prefetch.close(),
  };
}

/** NOT_FOUND for a manifest the registry does not have, listing the tags it has when it can. */
async function unknownManifest(client: RegistryClient, ref: RegistryRef): Promise<Error> {
  const where = repositoryName(ref);
  if (ref.digest !== null) return dmfsError('NOT_FOUND', `${where} has no manifest ${ref.digest}`);
  const tags = await client.listTags(ref.repository);
  if (tags === null) return dmfsError('NOT_FOUND', `${where} has no tag ${ref.tag} (the repository may not exist, and the registry would not list its tags)`);
  if (tags.length === 0) return dmfsError('NOT_FOUND', `${where} has no tag ${ref.tag}: the repository has no tags`);
  const shown = tags.slice(0, 20).join(', ');
  return dmfsError('NOT_FOUND', `${where} has no tag ${ref.tag}; it has: ${shown}${tags.length > 20 ? `, ... (${tags.length} tags)` : ''}`);
}
