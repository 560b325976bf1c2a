import { asDataBlock, type DataBlock } from './block-address';
import { packRecord, unpackRecord } from './codec';
import type { MetadataEnv, Table } from './metadata-env';
import { isProcessAlive, type ProcessIdentity } from './process-identity';
import type { SpaceMap } from './space-map';

/** pool-owners: a process that has the pool open writable. */
interface OwnerRecord extends ProcessIdentity {
  v: 1;
}

/** How many blocks one process takes from the space map at a time. */
const RESERVATION_BATCH = 64;
/** Recycled blocks a process keeps before giving the rest back (and punching them). */
export const RESERVATION_KEEP = 128;

const EMPTY = Buffer.alloc(0);

/** What the reservations need of their pool. */
export interface ReservationHost {
  readonly env: MetadataEnv;
  readonly spaceMap: SpaceMap;
  /**
   * Inside txn, before blocks are taken from the space map: how many this process may take
   * now (device size after any auto-extension, dm.min_free_space, host free space).
   */
  allocationAllowance(): number;
  /** Blocks leaving every reservation for the space map (dm.blkdiscard: punched first). */
  discard(blocks: DataBlock[]): Promise<void>;
  /** A refill handed out blocks (a host-full episode is over). */
  onRefilled(): void;
}

/**
 * Steps 1 and 3 of the pool's allocation protocol (see ThinPool), per process: blocks are
 * reserved to an owner id in pool-reserved and marked used in the space map, committed
 * before any data is written to them; consume() drops the reservation in the transaction
 * that maps the block; recycle() puts a freed block back into the reservation, and trim()
 * gives what is beyond a keep count back to the space map. A process that dies leaves its
 * reservation behind under its owner id; reclaimDeadOwners() frees it.
 */
export class BlockReservations {
  readonly ownerId: number;
  private readonly owners: Table;
  private readonly reserved: Table;
  /** Reserved, committed, not yet handed out. */
  private readonly handOut: DataBlock[] = [];
  private trimming: Promise<void> | null = null;

  /**
   * Registers this process as an owner (a new id from `nextOwnerId`, inside a txn); a
   * read-only pool registers nothing and gets owner id 0, which is never allocated.
   */
  constructor(private readonly host: ReservationHost, identity: ProcessIdentity | null, nextOwnerId: () => number) {
    this.owners = host.env.table('pool-owners');
    this.reserved = host.env.table('pool-reserved');
    this.ownerId = identity === null ? 0 : host.env.txn(() => {
      const id = nextOwnerId();
      this.owners.put(id, packRecord({ v: 1, ...identity } satisfies OwnerRecord));
      return id;
    });
  }

  /** A block reserved to this process and committed as used; null when none may be taken. */
  take(): DataBlock | null {
    if (!this.handOut.length) this.refill();
    return this.handOut.pop() ?? null;
  }

  /** Fills the reservation if it is empty (what take would do), ahead of need. */
  fillAhead(): void {
    if (!this.handOut.length) this.refill();
  }

  /** Returns a taken block that was not used (the caller's transaction failed). */
  untake(block: DataBlock): void {
    this.handOut.push(block);
  }

  /** Inside the caller's txn: the block is now referenced by committed metadata. */
  consume(block: DataBlock): void {
    this.reserved.del([this.ownerId, block]);
  }

  /** Inside the caller's txn: the block is no longer referenced; it returns to the reservation once committed. */
  recycle(block: DataBlock): void {
    this.reserved.put([this.ownerId, block], EMPTY);
    this.host.env.afterCommit(() => {
      this.handOut.push(block);
      if (this.handOut.length > RESERVATION_KEEP * 2 && !this.trimming) setImmediate(() => void this.trim().catch(() => undefined));
    });
  }

  /** Blocks reserved by live processes but not yet written (free as far as space figures go). */
  reservedCount(): number {
    return this.reserved.count([0], [Number.MAX_SAFE_INTEGER]);
  }

  private refill(): void {
    let fresh: DataBlock[] = [];
    this.host.env.txn(() => {
      const allowed = Math.min(RESERVATION_BATCH, this.host.allocationAllowance());
      if (allowed <= 0) return;
      fresh = this.host.spaceMap.allocate(allowed);
      for (const b of fresh) this.reserved.put([this.ownerId, b], EMPTY);
    });
    // Handed out only once committed: a failed commit (host full) leaves them free.
    // Lowest blocks first out of pop(): keeps files roughly sequential on the device.
    fresh.reverse();
    this.handOut.push(...fresh);
    if (fresh.length) this.host.onRefilled();
  }

  /** Gives recycled blocks beyond `keep` back to the space map (discarded first). */
  async trim(keep = RESERVATION_KEEP): Promise<void> {
    while (this.trimming) await this.trimming;
    if (this.handOut.length <= keep) return;
    this.trimming = (async () => {
      const excess = this.handOut.splice(0, this.handOut.length - keep);
      await this.host.discard(excess);
      this.host.env.txn(() => {
        for (const b of excess) this.reserved.del([this.ownerId, b]);
        this.host.spaceMap.release(excess);
      });
    })();
    try {
      await this.trimming;
    } finally {
      this.trimming = null;
    }
  }

  /** Frees blocks reserved by processes that died, and forgets those owners. Returns how many blocks. */
  async reclaimDeadOwners(): Promise<number> {
    const dead = this.otherOwners().filter((o) => !o.alive).map((o) => o.id);
    let freed = 0;
    for (const ownerId of dead) {
      // Two processes may reclaim the same dead owner at once. What is still reserved to it
      // is read and moved to this process's own reservation in one transaction, so each
      // block is claimed by exactly one reclaimer; only then is it discarded (no one else
      // can allocate it meanwhile) and released.
      const blocks = this.host.env.txn(() => {
        const claimed: DataBlock[] = [];
        for (const key of this.reserved.keys([ownerId], [ownerId + 1])) claimed.push(asDataBlock((key as number[])[1]));
        for (const b of claimed) {
          this.reserved.del([ownerId, b]);
          this.reserved.put([this.ownerId, b], EMPTY);
        }
        this.owners.del(ownerId);
        return claimed;
      });
      if (!blocks.length) continue;
      await this.host.discard(blocks);
      this.host.env.txn(() => {
        for (const b of blocks) this.reserved.del([this.ownerId, b]);
        this.host.spaceMap.release(blocks);
      });
      freed += blocks.length;
    }
    return freed;
  }

  /** Whether the process registered as ownerId is still alive. */
  isOwnerAlive(ownerId: number): boolean {
    if (ownerId === this.ownerId) return true;
    const raw = this.owners.get(ownerId);
    return raw ? isProcessAlive(unpackRecord<OwnerRecord>(raw)) : false;
  }

  /** Whether any process other than this one has the pool open. */
  hasOtherLiveOwners(): boolean {
    return this.otherOwners().some((o) => o.alive);
  }

  /** Every registered owner but this process, and whether its process still runs. */
  private otherOwners(): { id: number; alive: boolean }[] {
    const out: { id: number; alive: boolean }[] = [];
    for (const { key, value } of this.owners.range(0, Number.MAX_SAFE_INTEGER)) {
      if ((key as number) !== this.ownerId) out.push({ id: key as number, alive: isProcessAlive(unpackRecord<OwnerRecord>(value)) });
    }
    return out;
  }

  /** Every block reserved by live or dead owners (for check). */
  allReserved(): Set<number> {
    const out = new Set<number>();
    for (const key of this.reserved.keys([0], [Number.MAX_SAFE_INTEGER])) out.add((key as number[])[1]);
    return out;
  }

  /** Close: gives back everything still reserved to this process and forgets the owner (one txn). */
  giveBackAll(): void {
    this.host.env.txn(() => {
      const left: DataBlock[] = [];
      for (const key of this.reserved.keys([this.ownerId], [this.ownerId + 1])) left.push(asDataBlock((key as number[])[1]));
      for (const b of left) this.reserved.del([this.ownerId, b]);
      this.host.spaceMap.release(left);
      this.owners.del(this.ownerId);
    });
  }

  /**
   * A failed writable open: forgets the owner unless it holds a reservation (blocks
   * claimed from a dead owner half-way through reclaimDeadOwners), which the next open's
   * reclaim frees once this process is gone.
   */
  forgetOwnerIfEmpty(): void {
    this.host.env.txn(() => {
      for (const _ of this.reserved.keys([this.ownerId], [this.ownerId + 1])) return;
      this.owners.del(this.ownerId);
    });
  }
}
