/**
 * What `dmfs import SOURCE` can read, and how it is recognised:
 *
 * - a directory with `oci-layout`: an OCI image layout (skopeo `oci:`, umoci, buildah);
 * - a directory with `manifest.json`: an extracted `docker save` archive;
 * - any other directory: a plain root filesystem, imported as one layer;
 * - a tar file (optionally gzip/zstd compressed) holding `oci-layout` + `index.json`
 *   (an OCI archive, skopeo `oci-archive:`, docker 25+ `docker save`) or `manifest.json`
 *   (`docker save`, `podman save`);
 * - any other tar file (plain, gzip or zstd): a single layer.
 *
 * `SOURCE:TAG` picks the manifest whose `org.opencontainers.image.ref.name` is TAG (OCI)
 * or whose RepoTags hold TAG (docker); `SOURCE@sha256:...` picks a manifest (OCI) or
 * config (docker) by digest. A path that exists as given is never split.
 *
 * Trust: the manifest is checked against its descriptor digest and size, the config
 * against the manifest, each layer blob against its descriptor while it streams (the
 * importer does that), and each uncompressed layer against the config's diff id.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import {
  BlobAccess, blobPath, DirAccess, indexTarFile, normaliseMember, parseJson, readSmall, TarAccess,
} from './blob-access';
import { decompress, detectCompression, peek } from './decompress';
import { parseDigest } from './digest';
import { readTar } from './tar-reader';

export type SourceFormat = 'oci-layout' | 'oci-archive' | 'docker-archive' | 'docker-dir' | 'layer-tar' | 'directory' | 'registry';

export interface LayerSource {
  /** Digest of the blob as stored (compressed or not), when known. Checked while reading. */
  blobDigest: string | null;
  blobSizeBytes: number | null;
  /** sha256 of the uncompressed tar, from the config, when known. Checked while reading. */
  diffId: string | null;
  mediaType: string | null;
  /** For messages: where the layer comes from. */
  description: string;
  /** The stored bytes (still compressed). */
  open(): AsyncIterable<Buffer>;
  /** The stored bytes from `offsetBytes` on, when the source can seek (else open() is skipped through). */
  openAt?(offsetBytes: number): AsyncIterable<Buffer>;
  /** Labels the imported layer gets besides the importer's own (e.g. where the blob came from). */
  labels?: Record<string, string>;
}

export interface ImageSource {
  format: SourceFormat;
  layers: LayerSource[];
  /** The image config (OCI / docker), when the source has one. */
  config: Record<string, unknown> | null;
  configDigest: string | null;
  manifestDigest: string | null;
  /** A name from the source (RepoTags[0], ref name annotation), when it has one. */
  defaultName: string | null;
  /** For `directory`: the root to walk. */
  directory: string | null;
  /**
   * Called once, before the first open(), with the layers the importer will read, in the
   * order it reads them (layers already in the pool are left out). A source that
   * downloads starts fetching them ahead; the others never fetch a byte of a layer.
   */
  prepare?(needed: readonly LayerSource[]): void;
  close(): Promise<void>;
}

export interface OpenSourceOptions {
  /** Where a compressed image archive is unpacked to be read by range. Default os.tmpdir(). */
  tmpDir?: string;
  /** Cap on the uncompressed size of a compressed image archive. */
  maxUncompressedBytes?: number;
}

const MAX_JSON_BYTES = 4 * 1024 * 1024;
/** An image archive has a handful of members; a bigger tar is a layer. */
const MAX_ARCHIVE_MEMBERS = 100_000;

const MT = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
};
const REF_NAME = 'org.opencontainers.image.ref.name';

export interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string; variant?: string };
}

type Ref = { tag: string } | { digest: string } | null;

function exists(p: string): boolean {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Splits `path[:tag]` / `path[@digest]`; a path that exists as given wins. */
export function parseSourceSpec(spec: string): { file: string; ref: Ref } {
  if (exists(spec)) return { file: spec, ref: null };
  const at = /^(.+)@([a-z0-9]+:[a-zA-Z0-9=_-]+)$/.exec(spec);
  if (at && exists(at[1])) {
    parseDigest(at[2], 'reference digest');
    return { file: at[1], ref: { digest: at[2] } };
  }
  const colon = spec.lastIndexOf(':');
  if (colon > 0 && exists(spec.slice(0, colon)) && colon < spec.length - 1 && !spec.slice(colon + 1).includes('/')) {
    return { file: spec.slice(0, colon), ref: { tag: spec.slice(colon + 1) } };
  }
  throw dmfsError('NOT_FOUND', `import source ${spec} not found`);
}

export function asObject(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw dmfsError('BAD_IMAGE', `${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** A validated OCI descriptor (digest, size, mediaType); BAD_IMAGE names `what`. */
export function asDescriptor(v: unknown, what: string): Descriptor {
  const o = asObject(v, what);
  parseDigest(o.digest, `${what} digest`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) throw dmfsError('BAD_IMAGE', `${what} has no valid size`);
  if (o.mediaType !== undefined && typeof o.mediaType !== 'string') throw dmfsError('BAD_IMAGE', `${what} mediaType is not a string`);
  return o as unknown as Descriptor;
}

/** This host's architecture as OCI names it (x64 → amd64). */
export function hostArch(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

function diffIdsOf(config: Record<string, unknown>): string[] {
  const rootfs = asObject(config.rootfs, 'config rootfs');
  if (!Array.isArray(rootfs.diff_ids)) throw dmfsError('BAD_IMAGE', 'config rootfs.diff_ids is not a list');
  return rootfs.diff_ids.map((d, i) => {
    parseDigest(d, `diff_ids[${i}]`);
    return d as string;
  });
}

/** Opens an import source; the caller must `close()` it. */
export async function openImageSource(spec: string, opts: OpenSourceOptions = {}): Promise<ImageSource> {
  const { file, ref } = parseSourceSpec(spec);
  const st = await fs.promises.stat(file);
  if (st.isDirectory()) {
    if (exists(path.join(file, 'oci-layout'))) return openOci(new DirAccess(file), 'oci-layout', ref, path.basename(path.resolve(file)));
    if (exists(path.join(file, 'manifest.json'))) return openDocker(new DirAccess(file), 'docker-dir', ref);
    if (ref !== null) throw dmfsError('USAGE', `${file} is a plain directory: it has no tags or digests`);
    return {
      format: 'directory', layers: [], config: null, configDigest: null, manifestDigest: null,
      defaultName: null, directory: file, close: async () => {},
    };
  }
  if (!st.isFile()) throw dmfsError('BAD_IMAGE', `${file} is neither a file nor a directory`);

  const head = Buffer.alloc(6);
  const fd = await fs.promises.open(file, 'r');
  try {
    await fd.read(head, 0, 6, 0);
  } finally {
    await fd.close();
  }
  const compression = detectCompression(st.size >= 6 ? head : head.subarray(0, st.size));
  if (compression === 'none') {
    const index = await indexTarFile(file, MAX_ARCHIVE_MEMBERS);
    const kind = index.complete ? archiveKind(index.members) : null;
    if (kind !== null) return openArchive(new TarAccess(file, index.members), kind, ref, file);
    if (ref !== null) throw dmfsError('USAGE', `${file} is a single layer: it has no tags or digests`);
    return singleLayer(file, st.size, index.complete ? index.digest : null);
  }

  // Compressed: an image archive shows itself in its first members.
  if (await looksLikeCompressedArchive(file)) {
    const tmpDir = await fs.promises.mkdtemp(path.join(opts.tmpDir ?? os.tmpdir(), 'dmfs-import-'));
    const cleanup = async (): Promise<void> => fs.promises.rm(tmpDir, { recursive: true, force: true });
    try {
      const tarFile = path.join(tmpDir, 'image.tar');
      const out = fs.createWriteStream(tarFile);
      const { pipeline } = await import('node:stream/promises');
      const { Readable } = await import('node:stream');
      await pipeline(Readable.from(decompress(fs.createReadStream(file) as AsyncIterable<Buffer>, { maxOutputBytes: opts.maxUncompressedBytes })), out);
      const index = await indexTarFile(tarFile, MAX_ARCHIVE_MEMBERS);
      const kind = index.complete ? archiveKind(index.members) : null;
      if (kind === null) throw dmfsError('BAD_IMAGE', `${file}: not an image archive after all`);
      return await openArchive(new TarAccess(tarFile, index.members, cleanup), kind, ref, file);
    } catch (err) {
      await cleanup();
      throw err;
    }
  }
  if (ref !== null) throw dmfsError('USAGE', `${file} is a single layer: it has no tags or digests`);
  return singleLayer(file, st.size, null);
}

function archiveKind(members: Map<string, unknown>): 'oci' | 'docker' | null {
  if (members.has('oci-layout') && members.has('index.json')) return 'oci';
  if (members.has('manifest.json')) return 'docker';
  return null;
}

async function looksLikeCompressedArchive(file: string): Promise<boolean> {
  let n = 0;
  const { stream } = await peek(fs.createReadStream(file, { highWaterMark: 64 * 1024 }) as AsyncIterable<Buffer>, 6);
  const gen = readTar(decompress(stream, { maxOutputBytes: 256 * 1024 * 1024 }));
  try {
    for await (const { entry } of gen) {
      const name = entry.path.replace(/^(\.\/|\/)+/, '');
      if (name === 'oci-layout' || name === 'manifest.json' || name === 'index.json' || name === 'repositories') return true;
      if (++n >= 64) return false;
    }
  } catch {
    return false; // Not a readable tar at all: the layer import will say why.
  } finally {
    await gen.return(undefined);
  }
  return false;
}

function singleLayer(file: string, sizeBytes: number, diffId: string | null): ImageSource {
  const base = path.basename(file).replace(/(\.tar)?(\.gz|\.tgz|\.zst|\.zstd)?$/, '').replace(/^[^A-Za-z0-9]+/, '');
  return {
    format: 'layer-tar',
    layers: [{
      blobDigest: null, blobSizeBytes: sizeBytes, diffId, mediaType: null, description: file,
      open: () => fs.createReadStream(file, { highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>,
    }],
    config: null, configDigest: null, manifestDigest: null,
    defaultName: base.length > 0 ? base : null, directory: null, close: async () => {},
  };
}

async function openArchive(access: TarAccess, kind: 'oci' | 'docker', ref: Ref, file: string): Promise<ImageSource> {
  try {
    return kind === 'oci'
      ? await openOci(access, 'oci-archive', ref, path.basename(file).replace(/\.tar(\.gz|\.zst)?$/, ''))
      : await openDocker(access, 'docker-archive', ref);
  } catch (err) {
    await access.close();
    throw err;
  }
}

async function readJson(access: BlobAccess, relPath: string, what: string, digest?: string, sizeBytes?: number): Promise<Record<string, unknown>> {
  const data = await readSmall(access, relPath, MAX_JSON_BYTES, digest);
  if (sizeBytes !== undefined && data.length !== sizeBytes) {
    throw dmfsError('BAD_IMAGE', `${what}: size ${data.length} differs from the descriptor's ${sizeBytes}`);
  }
  return asObject(parseJson(data, what), what);
}

async function openOci(access: BlobAccess, format: SourceFormat, ref: Ref, layoutName: string): Promise<ImageSource> {
  const layout = await readJson(access, 'oci-layout', 'oci-layout');
  if (typeof layout.imageLayoutVersion !== 'string') throw dmfsError('BAD_IMAGE', 'oci-layout has no imageLayoutVersion');
  const index = await readJson(access, 'index.json', 'index.json');
  if (!Array.isArray(index.manifests)) throw dmfsError('BAD_IMAGE', 'index.json has no manifests list');
  const descs = index.manifests.map((m, i) => asDescriptor(m, `index.json manifests[${i}]`));

  let chosen: Descriptor;
  if (ref && 'digest' in ref) {
    const found = descs.find((d) => d.digest === ref.digest);
    if (found) chosen = found;
    else {
      const size = await access.stat(blobPath(ref.digest));
      if (size === null) throw dmfsError('NOT_FOUND', `no manifest ${ref.digest} in ${access.description}`);
      chosen = { digest: ref.digest, size };
    }
  } else if (ref && 'tag' in ref) {
    const found = descs.filter((d) => d.annotations?.[REF_NAME] === ref.tag);
    if (found.length === 0) {
      const tags = descs.map((d) => d.annotations?.[REF_NAME]).filter((t) => t !== undefined);
      throw dmfsError('NOT_FOUND', `no image tagged ${ref.tag} in ${access.description} (tags: ${tags.join(', ') || 'none'})`);
    }
    chosen = found[0];
  } else {
    if (descs.length !== 1) {
      const tags = descs.map((d) => d.annotations?.[REF_NAME] ?? d.digest);
      throw dmfsError('USAGE', `${access.description} holds ${descs.length} images; pick one with :TAG or @DIGEST (${tags.join(', ')})`);
    }
    chosen = descs[0];
  }

  // Follow nested indexes to the manifest for this platform.
  let manifest: Record<string, unknown> | null = null;
  let manifestDigest = chosen.digest;
  let refName = chosen.annotations?.[REF_NAME] ?? (ref && 'tag' in ref ? ref.tag : null);
  for (let depth = 0; depth < 4 && manifest === null; depth++) {
    const doc = await readJson(access, blobPath(chosen.digest), `manifest ${chosen.digest}`, chosen.digest, chosen.size);
    const mediaType = (doc.mediaType as string | undefined) ?? chosen.mediaType;
    if (mediaType === MT.ociIndex || mediaType === MT.dockerList || (mediaType === undefined && Array.isArray(doc.manifests))) {
      const subs = (Array.isArray(doc.manifests) ? doc.manifests : []).map((m, i) => asDescriptor(m, `index manifests[${i}]`));
      const mine = subs.filter((d) => (d.platform?.os ?? 'linux') === 'linux' && (d.platform?.architecture ?? hostArch()) === hostArch());
      const pick = mine[0] ?? (subs.length === 1 ? subs[0] : undefined);
      if (!pick) throw dmfsError('NOT_FOUND', `no linux/${hostArch()} image in index ${chosen.digest}`);
      refName = refName ?? pick.annotations?.[REF_NAME] ?? null;
      chosen = pick;
      manifestDigest = pick.digest;
      continue;
    }
    if (mediaType !== undefined && mediaType !== MT.ociManifest && mediaType !== MT.dockerManifest) {
      throw dmfsError('NOT_SUPPORTED', `manifest media type ${mediaType} is not supported`);
    }
    manifest = doc;
  }
  if (manifest === null) throw dmfsError('BAD_IMAGE', 'image indexes nest too deeply');

  const configDesc = asDescriptor(manifest.config, 'manifest config');
  const config = await readJson(access, blobPath(configDesc.digest), 'image config', configDesc.digest, configDesc.size);
  const diffIds = diffIdsOf(config);
  if (!Array.isArray(manifest.layers)) throw dmfsError('BAD_IMAGE', 'manifest has no layers list');
  const layerDescs = manifest.layers.map((l, i) => asDescriptor(l, `manifest layers[${i}]`));
  if (layerDescs.length !== diffIds.length) {
    throw dmfsError('BAD_IMAGE', `manifest lists ${layerDescs.length} layers but the config ${diffIds.length} diff ids`);
  }
  const layers: LayerSource[] = [];
  for (let i = 0; i < layerDescs.length; i++) {
    const d = layerDescs[i];
    const rel = blobPath(d.digest, `layer ${i} digest`);
    const size = await access.stat(rel);
    if (size === null) throw dmfsError('BAD_IMAGE', `layer blob ${d.digest} is missing from ${access.description}`);
    if (size !== d.size) throw dmfsError('BAD_IMAGE', `layer blob ${d.digest} is ${size} bytes, the manifest says ${d.size}`);
    layers.push({
      blobDigest: d.digest, blobSizeBytes: d.size, diffId: diffIds[i], mediaType: d.mediaType ?? null,
      description: `${access.description}:${rel}`, open: () => access.read(rel),
    });
  }
  const containerdName = chosen.annotations?.['io.containerd.image.name'];
  const defaultName = containerdName ?? (refName ? (refName.includes(':') || refName.includes('/') ? refName : `${layoutName}:${refName}`) : null);
  return {
    format, layers, config, configDigest: configDesc.digest, manifestDigest, defaultName, directory: null,
    close: () => access.close(),
  };
}

/** Digest named by a docker-archive path (`<hex>.json`, `blobs/sha256/<hex>`, `<hex>/layer.tar`), if any. */
function digestFromName(relPath: string): string | null {
  let m = /^blobs\/sha256\/([a-f0-9]{64})$/.exec(relPath);
  if (m) return `sha256:${m[1]}`;
  m = /^([a-f0-9]{64})\.json$/.exec(relPath);
  if (m) return `sha256:${m[1]}`;
  return null;
}

async function openDocker(access: BlobAccess, format: SourceFormat, ref: Ref): Promise<ImageSource> {
  const data = await readSmall(access, 'manifest.json', MAX_JSON_BYTES);
  const list = parseJson(data, 'manifest.json');
  if (!Array.isArray(list) || list.length === 0) throw dmfsError('BAD_IMAGE', 'manifest.json is not a non-empty list');
  const entries = list.map((e, i) => asObject(e, `manifest.json[${i}]`));
  const tagsOf = (e: Record<string, unknown>): string[] => (Array.isArray(e.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : []);
  let entry: Record<string, unknown>;
  if (ref && 'tag' in ref) {
    const found = entries.find((e) => tagsOf(e).some((t) => t === ref.tag || t.endsWith(`:${ref.tag}`)));
    if (!found) throw dmfsError('NOT_FOUND', `no image tagged ${ref.tag} in ${access.description}`);
    entry = found;
  } else if (ref && 'digest' in ref) {
    const found = entries.find((e) => typeof e.Config === 'string' && digestFromName(normaliseMember(e.Config)) === ref.digest);
    if (!found) throw dmfsError('NOT_FOUND', `no image with config ${ref.digest} in ${access.description}`);
    entry = found;
  } else {
    if (entries.length !== 1) {
      throw dmfsError('USAGE', `${access.description} holds ${entries.length} images; pick one with :TAG (${entries.flatMap(tagsOf).join(', ')})`);
    }
    entry = entries[0];
  }
  if (typeof entry.Config !== 'string') throw dmfsError('BAD_IMAGE', 'manifest.json entry has no Config');
  const configPath = normaliseMember(entry.Config);
  const configDigest = digestFromName(configPath);
  const config = await readJson(access, configPath, 'image config', configDigest ?? undefined);
  const diffIds = diffIdsOf(config);
  if (!Array.isArray(entry.Layers) || entry.Layers.some((l) => typeof l !== 'string')) {
    throw dmfsError('BAD_IMAGE', 'manifest.json entry has no Layers list');
  }
  const layerPaths = (entry.Layers as string[]).map((l) => normaliseMember(l));
  if (layerPaths.length !== diffIds.length) {
    throw dmfsError('BAD_IMAGE', `manifest.json lists ${layerPaths.length} layers but the config ${diffIds.length} diff ids`);
  }
  const layers: LayerSource[] = [];
  for (let i = 0; i < layerPaths.length; i++) {
    const rel = layerPaths[i];
    const size = await access.stat(rel);
    if (size === null) throw dmfsError('BAD_IMAGE', `layer ${rel} is missing from ${access.description}`);
    layers.push({
      blobDigest: digestFromName(rel), blobSizeBytes: size, diffId: diffIds[i], mediaType: null,
      description: `${access.description}:${rel}`, open: () => access.read(rel),
    });
  }
  const tags = tagsOf(entry);
  const defaultName = ref && 'tag' in ref ? tags.find((t) => t === ref.tag || t.endsWith(`:${ref.tag}`)) ?? null : tags[0] ?? null;
  return {
    format, layers, config, configDigest, manifestDigest: null, defaultName, directory: null,
    close: () => access.close(),
  };
}
