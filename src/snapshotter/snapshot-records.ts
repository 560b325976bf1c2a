/**
 * How a containerd snapshot lives in the pool: every snapshot is one dmfs layer, and what
 * containerd knows of it (key, namespace, kind, parent key, labels, update time) is kept in
 * that layer's labels under `dmfs.containerd.*`, so the store's own transactions keep the
 * two together and `dmfs ls` can show them.
 *
 *   active    → a container layer on the parent's layer, mounted read-write
 *   view      → a container layer on the parent's layer, mounted read-only
 *   committed → an image layer (a commit of the active one, or an empty image layer on a
 *               layer the pool already held: the fast path of the remote-snapshotter protocol)
 *
 * Keys: containerd's metadata store hands proxy snapshotters keys that are unique in the
 * whole backend (`NAMESPACE/SEQ/KEY`), and its garbage collector lists and removes them
 * without a namespace; so a key names one snapshot whatever the namespace, and the
 * namespace (the `containerd-namespace` gRPC header at creation) is kept beside it.
 */
import { createHash } from 'node:crypto';
import type { LayerInfo } from '../store/layer-store';

export type SnapshotKind = 'active' | 'view' | 'committed';

export interface SnapshotInfo {
  /** containerd's key (of a committed snapshot: its name). */
  key: string;
  namespace: string;
  kind: SnapshotKind;
  /** The parent snapshot's key; '' at the bottom. */
  parent: string;
  labels: Record<string, string>;
  createdMs: number;
  updatedMs: number;
  /** The dmfs layer holding it. */
  layerName: string;
  layerId: number;
}

export const SNAPSHOT_LABELS = {
  key: 'dmfs.containerd.key',
  namespace: 'dmfs.containerd.namespace',
  kind: 'dmfs.containerd.kind',
  parent: 'dmfs.containerd.parent',
  labels: 'dmfs.containerd.labels',
  updatedMs: 'dmfs.containerd.updated_ms',
  /** Present while the layer's removal is pending (snapshot-catalog.ts REMOVAL_MARK). */
  removing: 'dmfs.containerd.removing',
} as const;

const KINDS: ReadonlySet<string> = new Set<SnapshotKind>(['active', 'view', 'committed']);

/** The layer labels that record a snapshot (merged over the layer's other labels by the caller). */
export function snapshotLabels(s: Omit<SnapshotInfo, 'layerName' | 'layerId' | 'createdMs'>): Record<string, string> {
  return {
    [SNAPSHOT_LABELS.key]: s.key,
    [SNAPSHOT_LABELS.namespace]: s.namespace,
    [SNAPSHOT_LABELS.kind]: s.kind,
    [SNAPSHOT_LABELS.parent]: s.parent,
    [SNAPSHOT_LABELS.labels]: JSON.stringify(s.labels),
    [SNAPSHOT_LABELS.updatedMs]: String(s.updatedMs),
  };
}

/** The layer's labels without the snapshot record (what stays when a layer is handed back to dmfs). */
export function withoutSnapshotLabels(labels: Record<string, string>): Record<string, string> {
  // Also drops the removal mark: what is left is a plain dmfs layer.
  const rest: Record<string, string> = {};
  const ours = new Set<string>(Object.values(SNAPSHOT_LABELS));
  for (const [k, v] of Object.entries(labels)) if (!ours.has(k)) rest[k] = v;
  return rest;
}

/** The snapshot a layer holds, or null when it holds none (or its record does not parse: never guessed). */
export function snapshotOfLayer(layer: LayerInfo): SnapshotInfo | null {
  const l = layer.labels;
  const key = l[SNAPSHOT_LABELS.key];
  const kind = l[SNAPSHOT_LABELS.kind];
  if (key === undefined || kind === undefined || !KINDS.has(kind)) return null;
  let labels: Record<string, string> = {};
  try {
    const parsed: unknown = JSON.parse(l[SNAPSHOT_LABELS.labels] ?? '{}');
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      labels = Object.fromEntries(Object.entries(parsed as Record<string, unknown>).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
    }
  } catch {
    labels = {};
  }
  const updated = Number(l[SNAPSHOT_LABELS.updatedMs]);
  return {
    key,
    namespace: l[SNAPSHOT_LABELS.namespace] ?? '',
    kind: kind as SnapshotKind,
    parent: l[SNAPSHOT_LABELS.parent] ?? '',
    labels,
    createdMs: layer.createdMs,
    updatedMs: Number.isFinite(updated) ? updated : layer.createdMs,
    layerName: layer.name,
    layerId: layer.id,
  };
}

/** Characters a dmfs layer name may hold (see the store's name rule). */
const UNSAFE_NAME_CHARS = /[^A-Za-z0-9_.:@/+-]/g;

/**
 * The dmfs layer name for containerd key `key`: readable (`ctd/` + the key with characters
 * a layer name may not hold as '_', cut to fit) and unique (a hash of the whole key).
 */
export function layerNameForKey(key: string): string {
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 12);
  const readable = key.replace(UNSAFE_NAME_CHARS, '_').slice(0, 200);
  return `ctd/${readable}-${hash}`;
}

/** The layer ChainID a snapshot stands for, when containerd says: the snapshot.ref label, or an unpack key or commit name ending in one. */
export function chainIdOf(key: string, labels: Record<string, string>): string | null {
  const ref = labels['containerd.io/snapshot.ref'];
  if (ref && CHAIN_ID_RE.test(ref)) return ref;
  const m = /(?:^|[ /])(sha256:[0-9a-f]{64})$/.exec(key);
  return m ? m[1] : null;
}

const CHAIN_ID_RE = /^sha256:[0-9a-f]{64}$/;
