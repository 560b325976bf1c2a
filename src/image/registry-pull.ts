/**
 * `dmfs pull REF`: an image from a registry into image layers, through the importer.
 *
 * The same contract as `dmfs import` (naming, labels, reuse by ChainID, all-or-nothing):
 * the registry is one more import source. What pull adds:
 * - the default name is the reference as Docker shows it (`debian:bookworm`,
 *   `registry.example:5000/team/app:1`); `name` overrides it;
 * - each imported layer is labelled `dmfs.source_repository` (`host/repository`), which
 *   a push to another repository of that registry mounts the blob from;
 * - per-layer progress (`onLayer`): bytes downloaded, and the state of each layer.
 */
import type { LayerStore } from '../store/layer-store';
import { importFromSource, type ImportOptions, type ImportResult } from './importer';
import { RegistryClient } from './registry-client';
import type { RegistryCredentials } from './registry-credentials';
import { formatRegistryRef, parseRegistryRef } from './registry-ref';
import { configPlatform, hostPlatform, openRegistrySource, type Platform } from './registry-source';

export type PullLayerState = 'waiting' | 'downloading' | 'applying' | 'done' | 'exists';

export interface PullLayerProgress {
  index: number;
  digest: string;
  sizeBytes: number;
  downloadedBytes: number;
  state: PullLayerState;
}

export interface PullOptions {
  /** Image name; default the reference as Docker shows it. */
  name?: string;
  /** Default linux/<this host's architecture>. */
  platform?: Platform;
  plainHttp?: boolean;
  credentials?: RegistryCredentials | null;
  /** Roots of per-host CA directories; default /etc/docker/certs.d and /etc/containers/certs.d. */
  certsDirs?: readonly string[];
  /** Parallel layer downloads; default 3. */
  concurrency?: number;
  /** Called when a layer's state or byte count changes (the whole list each time). */
  onLayer?: (layers: readonly PullLayerProgress[]) => void;
  onWarning?: ImportOptions['onWarning'];
  env?: NodeJS.ProcessEnv;
  /** Delay before a Range resume, ms (tests); default 200 × attempt. */
  resumeDelayMs?: number;
}

export interface PullResult extends ImportResult {
  /** The full reference pulled (`host/repository:tag[@digest]`). */
  reference: string;
  manifestDigest: string;
  configDigest: string;
  platform: string;
  /** Compressed bytes downloaded for layers (resumed ranges counted once). */
  bytesDownloaded: number;
  /** Layer blobs fetched (0 when every layer was in the pool). */
  blobsFetched: number;
  /** Broken downloads resumed with a Range request. */
  resumes: number;
}

export async function pullImage(store: LayerStore, refText: string, opts: PullOptions = {}): Promise<PullResult> {
  const started = Date.now();
  const ref = parseRegistryRef(refText);
  const client = new RegistryClient({
    registry: ref.registry, repository: ref.repository, plainHttp: opts.plainHttp, credentials: opts.credentials ?? null,
    certsDirs: opts.certsDirs, env: opts.env, resumeDelayMs: opts.resumeDelayMs,
  });
  const platform = opts.platform ?? hostPlatform();
  let progress: PullLayerProgress[] = [];
  const resumesByLayer = new Map<number, number>();
  const changed = (): void => opts.onLayer?.(progress);
  try {
    const src = await openRegistrySource(client, ref, {
      platform,
      platformGiven: opts.platform !== undefined,
      concurrency: opts.concurrency,
      onLayerBytes: (e) => {
        const p = progress[e.index];
        if (!p) return;
        p.downloadedBytes = e.downloadedBytes;
        if (p.state === 'waiting') p.state = 'downloading';
        resumesByLayer.set(e.index, e.resumes);
        changed();
      },
    });
    progress = src.layers.map((l, index) => ({ index, digest: l.blobDigest!, sizeBytes: l.blobSizeBytes ?? 0, downloadedBytes: 0, state: 'waiting' as PullLayerState }));
    const prepare = src.prepare!.bind(src);
    src.prepare = (needed) => {
      for (const p of progress) if (!needed.includes(src.layers[p.index])) p.state = 'exists';
      prepare(needed);
      changed();
    };
    const result = await importFromSource(store, src, formatRegistryRef(ref), {
      name: opts.name,
      onWarning: opts.onWarning,
      onProgress: (p) => {
        // layersDone counts reused layers too: the layer at layersDone is the one applying.
        let moved = false;
        for (const l of progress) {
          const next: PullLayerState | null = l.state === 'exists' ? null : l.index < p.layersDone ? 'done' : l.index === p.layersDone ? 'applying' : null;
          if (next !== null && next !== l.state && !(next === 'applying' && l.state === 'done')) {
            l.state = next;
            moved = true;
          }
        }
        if (moved) changed();
      },
    });
    const fetched = [...src.fetched];
    return {
      ...result,
      reference: formatRegistryRef(ref),
      manifestDigest: src.manifestDigest!,
      configDigest: src.configDigest!,
      platform: src.config ? configPlatform(src.config) : 'unknown',
      bytesDownloaded: fetched.reduce((s, i) => s + (progress[i]?.downloadedBytes ?? 0), 0),
      blobsFetched: fetched.length,
      resumes: [...resumesByLayer.values()].reduce((s, n) => s + n, 0),
      durationMs: Date.now() - started,
    };
  } finally {
    await client.close();
  }
}
