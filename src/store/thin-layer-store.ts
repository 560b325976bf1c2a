import { dmfsError } from '../errors';
import { asDataBlock } from '../pool/block-address';
import { packUint48, unpackUint48 } from '../pool/codec';
import type { Table } from '../pool/metadata-env';
import type { ThinPool } from '../pool/thin-pool';
import { BlockSharing } from './block-sharing';
import { ChainLayerFs } from './chain-layer-fs';
import { ROOT_INO } from './inode-records';
import { openStoreTables, type StoreTables } from './store-tables';
import type {
  CreateLayerOptions, LayerFs, LayerInfo, LayerStore, OpenLayerOptions,
} from './layer-store';
import {
  inodeKey, isDataRef, nowTime, packHolder, packInode, packLayer, packUsage, segmentRange, unpackBlockRef, unpackHolder,
  unpackLayer, unpackUsage, usageBytes, type HolderRecord, type LayerRecord,
} from './records';

export const BASE_LAYER_NAME = 'base';
const LAYER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,254}$/;
/** Records deleted per transaction when removing a layer's segment (bounded transactions). */
const REMOVE_BATCH = 5000;

/**
 * The layer store over a thin pool (see the contract in layer-store.ts). Layer records
 * name a segment; a layer's chain is the list of its ancestors' segments.
 *
 * Cross-process rules: one writable holder per layer (others get LAYER_IN_USE); holders
 * of dead processes are dropped at open; a layer asked to be removed while held is
 * marked `deferredRemoval` and removed by the last holder's close (or the next open).
 */
export class ThinLayerStore implements LayerStore {
  private readonly layers: Table;
  private readonly names: Table;
  private readonly holders: Table;
  private readonly tables: StoreTables;
  private readonly open = new Set<ChainLayerFs>();
  /** What each layer open in this process holds: its layer id, writability and mounts (see assertNoConflict). */
  private readonly openHere = new Map<ChainLayerFs, { layerId: number; writable: boolean; mountpoints: Set<string> }>();

  private constructor(private readonly pool: ThinPool) {
    this.layers = pool.table('layers');
    this.names = pool.table('layer-names');
    this.holders = pool.table('holders');
    this.tables = openStoreTables(pool);
  }

  /** Opens the store, creating the base layer on a new pool and finishing what dead processes left. */
  static async open(pool: ThinPool): Promise<ThinLayerStore> {
    const store = new ThinLayerStore(pool);
    // Metadata backups (pool/metadata-backup.ts) list how many layers each copy holds.
    pool.backupDescriber = () => ({ layers: store.layers.count(0, Number.MAX_SAFE_INTEGER) });
    // Read-only pool (read-only file system): nothing to create or finish; reads only.
    if (pool.readOnly) return store;
    store.ensureBase();
    await store.reconcile();
    return store;
  }

  private ensureBase(): void {
    if (this.names.get(BASE_LAYER_NAME)) return;
    this.pool.txn(() => {
      if (this.names.get(BASE_LAYER_NAME)) return;
      const id = this.pool.counter('layer');
      const segment = this.pool.counter('segment');
      // The root takes inode number 1 (ROOT_INO); new inodes count on from there.
      this.pool.counter('ino');
      const t = nowTime();
      this.tables.inodes.put(inodeKey(segment, ROOT_INO), packInode({
        v: 1, kind: 'dir', mode: 0o040755, uid: 0, gid: 0, size: 0, nlink: 2, rdev: 0,
        atime: t, mtime: t, ctime: t, inherit: 0, born: true, parent: ROOT_INO, name: '',
      }));
      this.putLayer({
        v: 1, id, name: BASE_LAYER_NAME, kind: 'base', state: 'committed', parentId: null, segment,
        createdMs: Date.now(), labels: {}, sizeLimitBytes: this.pool.options.baseSizeBytes, deferredRemoval: false,
      });
    });
  }

  private putLayer(rec: LayerRecord): void {
    this.layers.put(rec.id, packLayer(rec));
    this.names.put(rec.name, packUint48(rec.id));
  }

  private layerById(id: number): LayerRecord {
    const raw = this.layers.get(id);
    if (!raw) throw dmfsError('METADATA_CORRUPT', `layer ${id} is referenced but missing`);
    return unpackLayer(raw);
  }

  private layerByName(name: string): LayerRecord {
    const raw = this.names.get(name);
    if (!raw) throw dmfsError('LAYER_NOT_FOUND', `no layer named '${name}'. List layers with 'dmfs ls'.`);
    return this.layerById(unpackUint48(raw));
  }

  private allLayers(): LayerRecord[] {
    return [...this.layers.range(0, Number.MAX_SAFE_INTEGER)].map(({ value }) => unpackLayer(value));
  }

  private liveHolders(layerId: number): (HolderRecord & { ownerId: number })[] {
    const out: (HolderRecord & { ownerId: number })[] = [];
    for (const { key, value } of this.holders.range([layerId], [layerId + 1])) {
      const ownerId = (key as number[])[1];
      if (this.pool.isOwnerAlive(ownerId)) out.push({ ...unpackHolder(value), ownerId });
    }
    return out;
  }

  private chainSegments(rec: LayerRecord): number[] {
    const segs: number[] = [];
    let cur: LayerRecord | null = rec;
    for (let depth = 0; cur; depth++) {
      if (depth > 10000) throw dmfsError('METADATA_CORRUPT', `layer chain of '${rec.name}' loops`);
      segs.push(cur.segment);
      cur = cur.parentId === null ? null : this.layerById(cur.parentId);
    }
    return segs;
  }

  private segmentBytes(segment: number): number {
    return usageBytes(this.tables.usage.get([segment]), this.pool.blockSizeBytes);
  }

  private info(rec: LayerRecord, all: LayerRecord[]): LayerInfo {
    let shared = 0;
    let cur = rec.parentId === null ? null : all.find((l) => l.id === rec.parentId) ?? null;
    while (cur) {
      shared += this.segmentBytes(cur.segment);
      const pid: number | null = cur.parentId;
      cur = pid === null ? null : all.find((l) => l.id === pid) ?? null;
    }
    const parent = rec.parentId === null ? null : all.find((l) => l.id === rec.parentId)?.name ?? null;
    return {
      id: rec.id,
      name: rec.name,
      kind: rec.kind,
      state: rec.state,
      parent,
      createdMs: rec.createdMs,
      labels: { ...rec.labels },
      sizeLimitBytes: rec.sizeLimitBytes,
      exclusiveBytes: this.segmentBytes(rec.segment),
      sharedBytes: shared,
      children: all.filter((l) => l.parentId === rec.id).map((l) => l.name).sort(),
      mounts: this.liveHolders(rec.id)
        .filter((h) => h.mountpoint)
        .map((h) => ({ pid: h.pid, mountpoint: h.mountpoint!, readOnly: h.readOnly })),
      deferredRemoval: rec.deferredRemoval,
    };
  }

  // ---- LayerStore --------------------------------------------------------------

  async createLayer(name: string, opts: CreateLayerOptions): Promise<LayerInfo> {
    if (!LAYER_NAME_RE.test(name)) {
      throw dmfsError('INVALID', `'${name}' is not a valid layer name (letters, digits and _ . : @ / + -, starting with a letter or digit, at most 255)`);
    }
    if (opts.kind !== 'image' && opts.kind !== 'container') throw dmfsError('INVALID', `unknown layer kind '${String(opts.kind)}'`);
    if (opts.sizeLimitBytes !== undefined && (!Number.isSafeInteger(opts.sizeLimitBytes) || opts.sizeLimitBytes < this.pool.blockSizeBytes)) {
      throw dmfsError('INVALID', `size limit ${opts.sizeLimitBytes} is smaller than one block`);
    }
    const parentName = opts.parent ?? BASE_LAYER_NAME;
    const rec = this.pool.txn(() => {
      if (this.names.get(name)) throw dmfsError('LAYER_EXISTS', `a layer named '${name}' already exists`);
      const parent = this.layerByName(parentName);
      // A chain of image layers may be built in one go (an import) by one process, and sealed bottom-up at the end.
      const sameBuilder = opts.kind === 'image' && opts.building && parent.builderOwnerId === this.pool.ownerId;
      if (parent.state === 'building' && !sameBuilder) throw dmfsError('WRONG_LAYER_KIND', `parent '${parentName}' is still being built`);
      if (parent.deferredRemoval || parent.state === 'removing') throw dmfsError('WRONG_LAYER_KIND', `parent '${parentName}' is being removed`);
      if (parent.kind === 'container') {
        throw dmfsError('WRONG_LAYER_KIND', `parent '${parentName}' is a container; commit it first ('dmfs commit ${parentName} IMAGE') and build on the image`);
      }
      if (!this.pool.hasMinFreeSpace()) {
        throw dmfsError('POOL_FULL', 'the thin pool is at dm.min_free_space: no new layers. Remove layers or grow the pool (dmfs pool resize).');
      }
      const r: LayerRecord = {
        v: 1,
        id: this.pool.counter('layer'),
        name,
        kind: opts.kind,
        state: opts.kind === 'container' ? 'active' : opts.building ? 'building' : 'committed',
        parentId: parent.id,
        segment: this.pool.counter('segment'),
        createdMs: Date.now(),
        labels: { ...(opts.labels ?? {}) },
        sizeLimitBytes: opts.sizeLimitBytes ?? Math.max(parent.sizeLimitBytes, this.pool.options.baseSizeBytes),
        deferredRemoval: false,
        ...(opts.kind === 'image' && opts.building ? { builderOwnerId: this.pool.ownerId } : {}),
      };
      this.putLayer(r);
      this.pool.noteMetadataChange(opts.building ? 'import' : 'create'); // backup hook
      return r;
    });
    await this.pool.sync();
    return this.info(rec, this.allLayers());
  }

  async sealLayer(name: string): Promise<LayerInfo> {
    const rec = this.pool.txn(() => {
      const r = this.layerByName(name);
      if (r.state !== 'building') throw dmfsError('WRONG_LAYER_KIND', `layer '${name}' is not being built`);
      if (r.parentId !== null && this.layerById(r.parentId).state === 'building') {
        throw dmfsError('WRONG_LAYER_KIND', `layer '${name}' sits on a layer still being built; seal that one first`);
      }
      if (this.liveHolders(r.id).some((h) => h.writable && h.ownerId !== this.pool.ownerId)) {
        throw dmfsError('LAYER_IN_USE', `layer '${name}' is open for writing elsewhere`);
      }
      const sealed: LayerRecord = { ...r, state: 'committed' };
      delete sealed.builderOwnerId;
      this.putLayer(sealed);
      this.pool.noteMetadataChange('import'); // backup hook
      return sealed;
    });
    await this.pool.sync();
    return this.info(rec, this.allLayers());
  }

  async commit(containerName: string, imageName: string): Promise<LayerInfo> {
    if (!LAYER_NAME_RE.test(imageName)) throw dmfsError('INVALID', `'${imageName}' is not a valid layer name`);
    for (const fs of this.open) if (fs.layerName === containerName && !fs.readOnly) await fs.fsync();
    const image = this.pool.txn(() => {
      const c = this.layerByName(containerName);
      if (c.kind !== 'container') throw dmfsError('WRONG_LAYER_KIND', `'${containerName}' is a ${c.kind} layer, not a container`);
      if (this.names.get(imageName)) throw dmfsError('LAYER_EXISTS', `a layer named '${imageName}' already exists`);
      const held = this.liveHolders(c.id).filter((h) => h.writable);
      if (held.length) {
        const where = held.map((h) => h.mountpoint ?? `pid ${h.pid}`).join(', ');
        throw dmfsError('LAYER_IN_USE', `container '${containerName}' is open for writing (${where}); unmount it first (dmfs umount MOUNTPOINT)`);
      }
      // O(1): the image takes over the container's segment; the container continues on a fresh one.
      const img: LayerRecord = {
        v: 1, id: this.pool.counter('layer'), name: imageName, kind: 'image', state: 'committed',
        parentId: c.parentId, segment: c.segment, createdMs: Date.now(), labels: {},
        sizeLimitBytes: c.sizeLimitBytes, deferredRemoval: false,
      };
      this.putLayer(img);
      this.putLayer({ ...c, parentId: img.id, segment: this.pool.counter('segment') });
      this.pool.noteMetadataChange('commit'); // backup hook
      return img;
    });
    await this.pool.sync();
    return this.info(image, this.allLayers());
  }

  async removeLayer(name: string): Promise<{ deferred: boolean }> {
    const result = this.pool.txn(() => {
      const r = this.layerByName(name);
      if (r.kind === 'base') throw dmfsError('NOT_PERMITTED', 'the base layer cannot be removed');
      this.pool.noteMetadataChange('rm'); // backup hook (dropped with the txn if the removal is refused)
      const children = this.allLayers().filter((l) => l.parentId === r.id);
      if (children.length) {
        throw dmfsError('LAYER_HAS_CHILDREN', `layer '${name}' has children (${children.map((c) => c.name).join(', ')}); remove them first`);
      }
      const held = this.liveHolders(r.id).filter((h) => h.ownerId !== this.pool.ownerId || this.isOpenHere(r.name));
      if (held.length) {
        if (!this.pool.options.deferredRemoval) {
          throw dmfsError('LAYER_IN_USE', `layer '${name}' is in use (${held.map((h) => h.mountpoint ?? `pid ${h.pid}`).join(', ')}); unmount it first`);
        }
        this.putLayer({ ...r, deferredRemoval: true });
        return { deferred: true, rec: r };
      }
      // Intent first: a crash part-way through leaves a 'removing' layer that the next open finishes.
      this.names.del(r.name);
      this.layers.put(r.id, packLayer({ ...r, state: 'removing', name: `\0removing-${r.id}` }));
      return { deferred: false, rec: r };
    });
    if (!result.deferred) await this.finishRemoval(result.rec.id);
    return { deferred: result.deferred };
  }

  private isOpenHere(name: string): boolean {
    for (const fs of this.open) if (fs.layerName === name) return true;
    return false;
  }

  /** Deletes a 'removing' layer's segment in bounded transactions, then the layer record. */
  private async finishRemoval(layerId: number): Promise<void> {
    const rec = this.layerById(layerId);
    const seg = rec.segment;
    const [sStart, sEnd] = segmentRange(seg);
    const sharing = new BlockSharing(this.tables.blockRefs);
    for (const table of [this.tables.bmap, this.tables.dirents, this.tables.inodes, this.tables.orphans]) {
      for (;;) {
        const batch = [...table.range(sStart, sEnd, { limit: REMOVE_BATCH })];
        if (!batch.length) break;
        this.pool.txn(() => {
          let blocks = 0;
          let inlineBytes = 0;
          for (const { key, value } of batch) {
            if (table === this.tables.bmap) {
              const ref = unpackBlockRef(value);
              // A block other entries still map (block-sharing.ts) stays, and was not this segment's usage.
              if (isDataRef(ref)) {
                if (sharing.dropSharer(ref.block)) {
                  this.pool.recycleBlock(asDataBlock(ref.block));
                  blocks++;
                }
              } else inlineBytes += ref.length;
            }
            table.del(key);
          }
          if (blocks || inlineBytes) {
            const u = unpackUsage(this.tables.usage.get([seg]));
            this.tables.usage.put([seg], packUsage({ ...u, blocks: u.blocks - blocks, inlineBytes: u.inlineBytes - inlineBytes }));
          }
        });
        await this.pool.trim();
      }
    }
    this.pool.txn(() => {
      this.tables.usage.del([seg]);
      for (const key of [...this.holders.keys([layerId], [layerId + 1])]) this.holders.del(key);
      this.layers.del(layerId);
    });
    await this.pool.trim(0);
    await this.pool.sync();
  }

  async renameLayer(name: string, newName: string): Promise<void> {
    if (!LAYER_NAME_RE.test(newName)) throw dmfsError('INVALID', `'${newName}' is not a valid layer name`);
    this.pool.txn(() => {
      const r = this.layerByName(name);
      if (r.kind === 'base') throw dmfsError('NOT_PERMITTED', 'the base layer cannot be renamed');
      if (this.names.get(newName)) throw dmfsError('LAYER_EXISTS', `a layer named '${newName}' already exists`);
      this.names.del(name);
      this.putLayer({ ...r, name: newName });
      this.pool.noteMetadataChange('rename'); // backup hook
    });
    await this.pool.sync();
  }

  async setLabels(name: string, labels: Record<string, string>): Promise<void> {
    this.pool.txn(() => {
      const r = this.layerByName(name);
      this.putLayer({ ...r, labels: { ...labels } });
      this.pool.noteMetadataChange('label'); // backup hook
    });
    await this.pool.sync();
  }

  async getLayer(name: string): Promise<LayerInfo> {
    return this.info(this.layerByName(name), this.allLayers());
  }

  async listLayers(): Promise<LayerInfo[]> {
    const all = this.allLayers().filter((l) => l.state !== 'removing');
    return all.sort((a, b) => a.id - b.id).map((l) => this.info(l, all));
  }

  async openLayer(name: string, opts: OpenLayerOptions = {}): Promise<LayerFs> {
    const mountpoints = new Set<string>(opts.mountpoint ? [opts.mountpoint] : []);
    // Read-only pool: no holder record can be written; every layer opens read-only.
    const { rec, readOnly } = this.pool.readOnly ? this.readOnlyPoolLayer(name) : this.pool.txn(() => {
      const r = this.layerByName(name);
      if (r.deferredRemoval) throw dmfsError('LAYER_NOT_FOUND', `layer '${name}' is being removed`);
      const writable = !opts.readOnly && (r.kind === 'container' || r.state === 'building');
      if (r.state === 'building' && r.builderOwnerId !== undefined && r.builderOwnerId !== this.pool.ownerId && this.pool.isOwnerAlive(r.builderOwnerId)) {
        throw dmfsError('LAYER_IN_USE', `layer '${name}' is being built by another process`);
      }
      this.assertNoConflict(r, null, { writable, mountpoint: opts.mountpoint ?? null });
      this.writeOwnHolder(r.id, { writable, mountpoints });
      return { rec: r, readOnly: !writable };
    });
    const fs: ChainLayerFs = new ChainLayerFs(this.pool, this.tables, {
      layerName: rec.name,
      segments: this.chainSegments(rec),
      readOnly,
      sizeLimitBytes: rec.sizeLimitBytes,
      onClose: async () => {
        this.open.delete(fs);
        this.openHere.delete(fs);
        await this.afterClose(rec.id, !readOnly);
      },
      // A read-only pool records no holders (nothing can change under its mounts either).
      onClaimMount: (mountpoint, coherent) => {
        const mine = this.openHere.get(fs);
        if (this.pool.readOnly || !mine || mine.mountpoints.has(mountpoint)) return;
        this.pool.txn(() => {
          this.assertNoConflict(this.layerById(rec.id), fs, { writable: !readOnly, mountpoint, coherent });
          mine.mountpoints.add(mountpoint);
          this.writeOwnHolder(rec.id);
        });
      },
      onReleaseMount: (mountpoint) => {
        const mine = this.openHere.get(fs);
        if (!mine || !mine.mountpoints.delete(mountpoint) || this.pool.readOnly) return;
        this.pool.txn(() => this.writeOwnHolder(rec.id));
      },
    });
    this.open.add(fs);
    this.openHere.set(fs, { layerId: rec.id, writable: !readOnly, mountpoints });
    // A writable layer is about to write: take this process's block reservation now, so
    // the first write (a container's first copy-up) does not wait for it.
    if (!readOnly) this.pool.reserveAhead();
    return fs;
  }

  private readOnlyPoolLayer(name: string): { rec: LayerRecord; readOnly: true } {
    const r = this.layerByName(name);
    if (r.deferredRemoval) throw dmfsError('LAYER_NOT_FOUND', `layer '${name}' is being removed`);
    return { rec: r, readOnly: true };
  }

  /**
   * Inside txn: refuses (LAYER_IN_USE) an open or a mount that would let a mount serve
   * stale names, attributes or data. Every mount caches what it serves for as long as the
   * kernel likes (the kernel transport: an hour), trusting that nothing but itself changes
   * its layer. So, counting other processes' live holders and this process's other opens:
   * - a writable open: no other writer (one writer per layer) and no mount anywhere;
   * - a mount (`want.mountpoint`): no writer anywhere else;
   * - one writable open mounted at two places: refused too (each mount caches on its own),
   *   unless the claim is `coherent`: its server invalidates each mount's caches when
   *   another changes the layer (SharedLayer in the daemon).
   * Read-only opens that do not mount (export, diff) only read committed metadata: free.
   * Holders of dead processes do not count (liveHolders), so a killed mount blocks nothing.
   * Another process's mounts are never coherent with ours: no process can invalidate the
   * kernel caches of a mount another one serves.
   */
  private assertNoConflict(r: LayerRecord, self: ChainLayerFs | null, want: { writable: boolean; mountpoint: string | null; coherent?: boolean }): void {
    type Use = { pid: number; writable: boolean; mountpoint: string | null };
    const uses: Use[] = this.liveHolders(r.id)
      .filter((h) => h.ownerId !== this.pool.ownerId)
      .map((h) => ({ pid: h.pid, writable: h.writable, mountpoint: h.mountpoint }));
    for (const [fs, o] of this.openHere) {
      if (fs === self || o.layerId !== r.id) continue;
      if (!o.mountpoints.size) uses.push({ pid: process.pid, writable: o.writable, mountpoint: null });
      for (const mp of o.mountpoints) uses.push({ pid: process.pid, writable: o.writable, mountpoint: mp });
    }
    const selfMounts = self ? [...(this.openHere.get(self)?.mountpoints ?? [])] : [];
    const name = r.name;
    const where = (u: Use) => (u.mountpoint ? `at ${u.mountpoint} (pid ${u.pid})` : `by pid ${u.pid}`);
    const rwMount = uses.find((u) => u.writable && u.mountpoint);
    const writer = rwMount ?? uses.find((u) => u.writable);
    const mounted = uses.find((u) => u.mountpoint);
    const afterwards =
      `To see its files elsewhere, unmount it, commit it (dmfs commit ${name} IMAGE) ` +
      `and mount the image, or a new container on it (dmfs create NAME --from IMAGE). ` +
      `Or serve both mounts from the pool's daemon (dmfs daemon start), which keeps several mounts of one layer coherent.`;
    if (want.mountpoint && writer) {
      const how = writer.mountpoint ? `mounted read-write ${where(writer)}` : `open for writing ${where(writer)}`;
      const fix = writer.mountpoint ? `Unmount it first (dmfs umount ${writer.mountpoint}). ${afterwards}` : 'Wait for that process to finish.';
      // Whoever serves that mount could not invalidate this one's kernel caches, nor this one that mount's.
      throw dmfsError('LAYER_IN_USE', `layer '${name}' is in use, ${how}: a second mount at ${want.mountpoint}, served apart from it, would not see its changes (one server cannot invalidate another's kernel caches). ${fix}`);
    }
    if (want.writable && writer) {
      const how = writer.mountpoint ? `mounted read-write ${where(writer)}` : `already open for writing ${where(writer)}`;
      const fix = writer.mountpoint ? `unmount it first (dmfs umount ${writer.mountpoint}) or mount with --ro once it is unmounted` : 'wait for that process to finish';
      throw dmfsError('LAYER_IN_USE', `layer '${name}' is in use, ${how}; ${fix}`);
    }
    if (want.writable && mounted) {
      throw dmfsError(
        'LAYER_IN_USE',
        `layer '${name}' is in use, mounted read-only ${where(mounted)}: writing it would leave that mount stale. ` +
          `Unmount it first (dmfs umount ${mounted.mountpoint}), or mount with --ro.`,
      );
    }
    if (want.writable && want.mountpoint && !want.coherent && selfMounts.some((mp) => mp !== want.mountpoint)) {
      throw dmfsError('LAYER_IN_USE', `layer '${name}' is in use, mounted read-write at ${selfMounts[0]} by this process, which does not keep two mounts of it coherent (the pool's daemon does: dmfs daemon start)`);
    }
  }

  /**
   * Inside txn: this process's holder record of a layer, from what it has open (plus
   * `extra`, an open being registered). Gone when nothing is open; `mountpoint` names
   * one of its mounts (`dmfs ls`, error messages).
   */
  private writeOwnHolder(layerId: number, extra?: { writable: boolean; mountpoints: Set<string> }): void {
    const mine = [...this.openHere.values()].filter((o) => o.layerId === layerId);
    if (extra) mine.push({ layerId, ...extra });
    const key = [layerId, this.pool.ownerId];
    if (!mine.length) {
      this.holders.del(key);
      return;
    }
    const writable = mine.some((o) => o.writable);
    const mountpoint = mine.flatMap((o) => [...o.mountpoints])[0] ?? null;
    this.holders.put(key, packHolder({ v: 1, writable, mountpoint, readOnly: !writable, pid: process.pid }));
  }

  private async afterClose(layerId: number, wasWritable: boolean): Promise<void> {
    if (this.pool.readOnly) return;
    const removeNow = this.pool.txn(() => {
      // Backup hook: a writable layer closing (an unmount) may have changed files.
      if (wasWritable) this.pool.noteMetadataChange('unmount');
      // Still open here under another handle: the holder shrinks to what stays open.
      this.writeOwnHolder(layerId);
      if ([...this.openHere.values()].some((o) => o.layerId === layerId)) return false;
      const raw = this.layers.get(layerId);
      if (!raw) return false;
      const r = unpackLayer(raw);
      if (!r.deferredRemoval || this.liveHolders(layerId).length) return false;
      this.names.del(r.name);
      this.layers.put(r.id, packLayer({ ...r, state: 'removing', name: `\0removing-${r.id}` }));
      return true;
    });
    if (removeNow) await this.finishRemoval(layerId);
  }

  /** Finishes what dead processes left: holders, orphans, half-built images, removals. */
  async reconcile(): Promise<{ holders: number; orphans: number; building: number; removals: number }> {
    const report = { holders: 0, orphans: 0, building: 0, removals: 0 };
    for (const l of this.allLayers()) {
      const dead = [...this.holders.range([l.id], [l.id + 1])].filter(({ key }) => !this.pool.isOwnerAlive((key as number[])[1]));
      if (dead.length) {
        this.pool.txn(() => dead.forEach(({ key }) => this.holders.del(key)));
        report.holders += dead.length;
      }
    }
    // Children before parents (children have larger ids): a dead import's chain of building layers goes top-down.
    for (const l of this.allLayers().sort((a, b) => b.id - a.id)) {
      if (l.state === 'removing') {
        await this.finishRemoval(l.id);
        report.removals++;
      } else if (l.state === 'building' && l.builderOwnerId !== undefined && !this.pool.isOwnerAlive(l.builderOwnerId)) {
        // An import killed part-way: the pool goes back to how it was before it.
        this.pool.txn(() => {
          this.names.del(l.name);
          this.layers.put(l.id, packLayer({ ...l, state: 'removing', name: `\0removing-${l.id}` }));
        });
        await this.finishRemoval(l.id);
        report.building++;
      } else if (l.deferredRemoval && !this.liveHolders(l.id).length && !this.allLayers().some((c) => c.parentId === l.id)) {
        this.pool.txn(() => {
          this.names.del(l.name);
          this.layers.put(l.id, packLayer({ ...l, state: 'removing', name: `\0removing-${l.id}` }));
        });
        await this.finishRemoval(l.id);
        report.removals++;
      } else if (!this.liveHolders(l.id).length) {
        // Held by nobody: a writable open here cannot conflict with a live mount's caches.
        const orphanKeys = [...this.tables.orphans.keys([l.segment], [l.segment + 1])];
        if (orphanKeys.length) {
          const fs = (await this.openLayer(l.name, l.kind === 'container' || l.state === 'building' ? {} : { readOnly: true })) as ChainLayerFs;
          await fs.close(); // close frees the orphans of a writable layer
          report.orphans += orphanKeys.length;
        }
      }
    }
    return report;
  }

  async close(): Promise<void> {
    for (const fs of [...this.open]) await fs.close();
  }


}

