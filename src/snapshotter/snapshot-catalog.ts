/**
 * containerd's snapshot lifecycle on a dmfs layer store (see snapshot-records.ts for the
 * mapping). Knows nothing of gRPC or mounts: SnapshotterService calls it and mounts what it
 * returns. Errors are DmfsErrors whose codes map onto containerd's (grpc-errors.ts):
 * NOT_FOUND / LAYER_NOT_FOUND, LAYER_EXISTS, WRONG_LAYER_KIND / LAYER_HAS_CHILDREN
 * (failed precondition), INVALID.
 *
 * Every change is one or two store calls, each its own metadata transaction. Where a change
 * needs two (a commit: the store's commit, then removing the emptied container), a crash
 * between them leaves a container layer whose record still says `active`: the key then
 * still names it and containerd's own clean-up (Remove of the unpack key) removes it.
 * Remove records its intent first (a removal mark replaces the snapshot record) and the
 * layer goes afterwards, so a crash in between leaves a mark the next sweep finishes.
 */
import { dmfsError, isDmfsError } from '../errors';
import type { LayerChange, LayerInfo, LayerStore } from '../store/layer-store';
import { BASE_LAYER_NAME } from '../store/thin-layer-store';
import {
  SNAPSHOT_LABELS, chainIdOf, layerNameForKey, snapshotLabels, snapshotOfLayer, withoutSnapshotLabels,
  type SnapshotInfo, type SnapshotKind,
} from './snapshot-records';

/** The label of dmfs's image import that names a layer's OCI ChainID (image/importer.ts). */
const CHAIN_ID_LABEL = 'dmfs.chain_id';
/** Marks a layer whose snapshot was removed and whose own removal is pending (value: the key it held). */
export const REMOVAL_MARK = SNAPSHOT_LABELS.removing;
/** containerd's label for the committed snapshot a Prepare is meant to become (remote-snapshotter protocol). */
export const SNAPSHOT_REF_LABEL = 'containerd.io/snapshot.ref';

export interface SnapshotUsage {
  sizeBytes: number;
  inodes: number;
}

export interface CreateRequest {
  kind: 'active' | 'view';
  key: string;
  parent: string;
  namespace: string;
  labels: Record<string, string>;
}

export class SnapshotCatalog {
  constructor(private readonly store: LayerStore) {}

  /** Every snapshot of the pool (all namespaces), parents before children. */
  async list(): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const l of await this.store.listLayers()) {
      const s = snapshotOfLayer(l);
      if (s) out.push(s);
    }
    return out;
  }

  async find(key: string): Promise<SnapshotInfo | null> {
    if (!key) return null;
    const layer = await this.layerOrNull(layerNameForKey(key));
    const s = layer ? snapshotOfLayer(layer) : null;
    return s && s.key === key ? s : null;
  }

  async get(key: string): Promise<SnapshotInfo> {
    if (!key) throw dmfsError('INVALID', 'the snapshot key is empty');
    const s = await this.find(key);
    if (!s) throw dmfsError('NOT_FOUND', `snapshot ${key} does not exist`);
    return s;
  }

  /**
   * The committed snapshot a Prepare with `containerd.io/snapshot.ref` asks for, made
   * without unpacking when the pool holds that layer already: an existing committed
   * snapshot with that ref on that parent, else an empty image layer (O(1)) on the dmfs
   * layer whose ChainID it is. Null when the pool does not hold it: unpack as usual.
   */
  async committedForRef(req: CreateRequest): Promise<SnapshotInfo | null> {
    const ref = req.labels[SNAPSHOT_REF_LABEL];
    if (req.kind !== 'active' || !ref) return null;
    const chainId = chainIdOf('', { [SNAPSHOT_REF_LABEL]: ref });
    const layers = await this.store.listLayers();
    for (const l of layers) {
      const s = snapshotOfLayer(l);
      if (s && s.kind === 'committed' && s.parent === req.parent && s.labels[SNAPSHOT_REF_LABEL] === ref) return s;
    }
    if (!chainId) return null;
    const held = layers.find((l) => l.kind === 'image' && l.state === 'committed' && !l.deferredRemoval && l.labels[CHAIN_ID_LABEL] === chainId);
    if (!held) return null;
    if (req.parent) await this.committedParent(req.parent);
    const key = `${req.namespace || '_'}/dmfs-ref/${ref}`;
    const now = Date.now();
    const name = layerNameForKey(key);
    await this.store.createLayer(name, {
      parent: held.name,
      kind: 'image',
      labels: snapshotLabels({ key, namespace: req.namespace, kind: 'committed', parent: req.parent, labels: req.labels, updatedMs: now }),
    });
    return this.get(key);
  }

  /** A new active or view snapshot: a container layer on the parent's layer (O(1)). */
  async create(req: CreateRequest): Promise<SnapshotInfo> {
    if (!req.key) throw dmfsError('INVALID', 'the snapshot key is empty');
    if (await this.find(req.key)) throw dmfsError('LAYER_EXISTS', `snapshot ${req.key} already exists`);
    const parentLayer = req.parent ? (await this.committedParent(req.parent)).layerName : BASE_LAYER_NAME;
    const now = Date.now();
    await this.store.createLayer(layerNameForKey(req.key), {
      parent: parentLayer,
      kind: 'container',
      labels: snapshotLabels({ key: req.key, namespace: req.namespace, kind: req.kind, parent: req.parent, labels: req.labels, updatedMs: now }),
    });
    return this.get(req.key);
  }

  /**
   * Active snapshot `key` becomes committed snapshot `name` (the caller has unmounted it):
   * the store's O(1) commit hands the container's segment to a new image layer, and the
   * emptied container goes. Labels: the active snapshot's, overlaid by `labels`.
   */
  async commit(name: string, key: string, labels: Record<string, string>, namespace: string): Promise<SnapshotInfo> {
    if (!name) throw dmfsError('INVALID', 'the name to commit to is empty');
    const active = await this.get(key);
    if (active.kind !== 'active') throw dmfsError('WRONG_LAYER_KIND', `snapshot ${key} is ${active.kind}, not active: only an active snapshot can be committed`);
    if (await this.find(name)) throw dmfsError('LAYER_EXISTS', `snapshot ${name} already exists`);
    const merged = { ...active.labels, ...labels };
    const imageName = layerNameForKey(name);
    await this.store.commit(active.layerName, imageName);
    const chainId = chainIdOf(name, merged);
    await this.store.setLabels(imageName, {
      ...(chainId ? { [CHAIN_ID_LABEL]: chainId } : {}),
      ...snapshotLabels({ key: name, namespace: namespace || active.namespace, kind: 'committed', parent: active.parent, labels: merged, updatedMs: Date.now() }),
    });
    await this.store.removeLayer(active.layerName);
    return this.get(name);
  }

  /**
   * Removes snapshot `key` from containerd's view at once (one transaction: the snapshot
   * record becomes a removal mark), leaving the layer to finishRemoval, which the caller
   * runs after unmounting it. A snapshot with children is refused (WRONG_LAYER_KIND →
   * failed precondition). A mark left by a crash is finished by the next sweep
   * (pendingRemovals). Returns the layer to finish.
   */
  async remove(key: string): Promise<string> {
    const s = await this.get(key);
    const children = (await this.list()).filter((c) => c.parent === key);
    if (children.length) {
      throw dmfsError('WRONG_LAYER_KIND', `snapshot ${key} has children (${children.map((c) => c.key).join(', ')}): remove them first`);
    }
    const layer = await this.store.getLayer(s.layerName);
    await this.store.setLabels(s.layerName, { ...withoutSnapshotLabels(layer.labels), [REMOVAL_MARK]: key });
    return s.layerName;
  }

  /**
   * Removes a marked layer; returns its parent layer's name when it went (a marked parent
   * may go next), else null. While a child holds a snapshot or is marked itself, the layer
   * waits (LAYER_HAS_CHILDREN): containerd removes a chain in no set order across
   * namespaces, and the last child to go finishes its parent. A layer that only plain dmfs
   * layers build on stays in the pool as a plain dmfs layer: only the mark goes.
   */
  async finishRemoval(layerName: string): Promise<string | null> {
    const layer = await this.layerOrNull(layerName);
    if (!layer || layer.labels[REMOVAL_MARK] === undefined) return null;
    if (layer.children.length) {
      const all = await this.store.listLayers();
      const children = all.filter((l) => layer.children.includes(l.name));
      if (children.some((c) => c.labels[REMOVAL_MARK] !== undefined || snapshotOfLayer(c))) {
        throw dmfsError('LAYER_HAS_CHILDREN', `layer ${layerName} waits for the removal of its children (${layer.children.join(', ')})`);
      }
      await this.store.setLabels(layerName, withoutSnapshotLabels(layer.labels));
      return null;
    }
    await this.store.removeLayer(layerName);
    return layer.parent;
  }

  /** Whether the layer of key `key` is still there, marked for removal. */
  async isPendingRemoval(key: string): Promise<boolean> {
    return this.isMarkedForRemoval(layerNameForKey(key));
  }

  async isMarkedForRemoval(layerName: string): Promise<boolean> {
    const layer = await this.layerOrNull(layerName);
    return layer !== null && layer.labels[REMOVAL_MARK] !== undefined;
  }

  /** Layers marked for removal, children before parents. */
  async pendingRemovals(): Promise<string[]> {
    const marked = (await this.store.listLayers()).filter((l) => l.labels[REMOVAL_MARK] !== undefined);
    const depth = (l: LayerInfo): number => (marked.some((m) => l.children.includes(m.name)) ? 1 + Math.max(...marked.filter((m) => l.children.includes(m.name)).map(depth)) : 0);
    return marked.sort((a, b) => depth(a) - depth(b)).map((l) => l.name);
  }

  /** Replaces the labels (`paths` empty or containing 'labels') or the named ones (`labels.K`). */
  async updateLabels(key: string, labels: Record<string, string>, paths: string[]): Promise<SnapshotInfo> {
    const s = await this.get(key);
    let next: Record<string, string>;
    if (paths.length === 0 || paths.includes('labels')) next = { ...labels };
    else {
      next = { ...s.labels };
      for (const p of paths) {
        if (!p.startsWith('labels.')) throw dmfsError('INVALID', `cannot update field ${p} of snapshot ${key}: only labels can change`);
        const k = p.slice('labels.'.length);
        if (labels[k] === undefined) delete next[k];
        else next[k] = labels[k];
      }
    }
    const layer = await this.store.getLayer(s.layerName);
    await this.store.setLabels(s.layerName, {
      ...layer.labels,
      ...snapshotLabels({ key: s.key, namespace: s.namespace, kind: s.kind, parent: s.parent, labels: next, updatedMs: Date.now() }),
    });
    return this.get(key);
  }

  /**
   * What the snapshot holds itself: the pool bytes of its layer's own segment, and the
   * inodes it adds or changes (its own changes against the parent, as `dmfs diff` lists them).
   */
  async usage(key: string): Promise<SnapshotUsage> {
    const s = await this.get(key);
    const layer = await this.store.getLayer(s.layerName);
    const fs = await this.store.openLayer(s.layerName, { readOnly: true });
    let inodes = 0;
    try {
      for await (const c of fs.changes() as AsyncIterable<LayerChange>) if (c.change === 'added' || c.change === 'modified') inodes++;
    } finally {
      await fs.close();
    }
    return { sizeBytes: layer.exclusiveBytes, inodes };
  }

  /** The committed snapshot `key` that a new snapshot builds on; NOT_FOUND or WRONG_LAYER_KIND otherwise. */
  private async committedParent(key: string): Promise<SnapshotInfo> {
    const p = await this.find(key);
    if (!p) throw dmfsError('NOT_FOUND', `parent snapshot ${key} does not exist`);
    if (p.kind !== 'committed') throw dmfsError('WRONG_LAYER_KIND', `parent snapshot ${key} is ${p.kind}, not committed: commit it first`);
    return p;
  }

  private async layerOrNull(name: string): Promise<LayerInfo | null> {
    try {
      return await this.store.getLayer(name);
    } catch (err) {
      if (isDmfsError(err, 'LAYER_NOT_FOUND') || isDmfsError(err, 'NOT_FOUND')) return null;
      throw err;
    }
  }
}

export type { SnapshotInfo, SnapshotKind };
