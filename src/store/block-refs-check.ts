import type { Table } from '../pool/metadata-env';
import type { ThinPool } from '../pool/thin-pool';
import { packSharers, unpackSharers } from './block-sharing';

/** Problems listed one by one; past it, one line with the count. */
const LISTED = 20;

export interface BlockRefsCheckOptions {
  repair: boolean;
  force: boolean;
  /** Block-map entries may be lost or unreadable: a count above what the map shows may be right. */
  mapDamaged: boolean;
  report: (kind: string, message: string, repaired?: boolean) => void;
}

/**
 * `dmfs check`'s pass over block-refs (block-sharing.ts): every data block mapped by more
 * than one entry has a count equal to the entries that map it, and every count belongs to
 * such a block. `sharers` holds the blocks the block-map pass saw more than once (with how
 * often), `referenced` every block it saw. Each mismatch is REFCOUNT_MISMATCH.
 *
 * Repair is conservative: a count too low (or missing) is raised to the entries found, so
 * every sharer copies on its next write and none is freed while another maps it; a count
 * above the entries found is lowered only while the map is intact (with lost entries, the
 * missing sharers may be those), or with force.
 */
export function checkBlockRefs(
  refs: Table,
  sharers: ReadonlyMap<number, number>,
  referenced: ReadonlySet<number>,
  opts: BlockRefsCheckOptions,
  pool: ThinPool,
): void {
  const fixes: { block: number; sharers: number }[] = [];
  let listed = 0;
  const mismatch = (message: string, repaired: boolean) => {
    if (listed++ < LISTED) opts.report('REFCOUNT_MISMATCH', message, repaired);
  };
  const counted = new Set<number>();
  for (const { key, value } of refs.range(0, Number.MAX_SAFE_INTEGER)) {
    const block = key as number;
    counted.add(block);
    const found = sharers.get(block) ?? (referenced.has(block) ? 1 : 0);
    let stored: number | null;
    try {
      stored = unpackSharers(value);
    } catch {
      stored = null;
    }
    if (stored === found) continue;
    const lowering = stored === null || stored > found;
    const fixable = opts.repair && (!lowering || !opts.mapDamaged || opts.force);
    const what = stored === null ? 'a reference count record that does not decode' : `a reference count of ${stored}`;
    mismatch(
      `data block ${block} has ${what}, and ${found} block-map entries map it` +
        (fixable ? ` (set to ${found})` : lowering && opts.mapDamaged ? ': kept, since block-map entries were lost (--force lowers it)' : ''),
      fixable,
    );
    if (fixable) fixes.push({ block, sharers: found });
  }
  for (const [block, n] of sharers) {
    if (counted.has(block)) continue;
    mismatch(
      `data block ${block} is mapped by ${n} block-map entries but has no reference count: a write through one would change the others` +
        (opts.repair ? ` (counted ${n}: each copies on its next write)` : ''),
      opts.repair,
    );
    if (opts.repair) fixes.push({ block, sharers: n });
  }
  if (listed > LISTED) opts.report('REFCOUNT_MISMATCH', `${listed - LISTED} more reference count mismatches`, opts.repair);
  if (!fixes.length) return;
  pool.txn(() => {
    for (const f of fixes) {
      if (f.sharers >= 2) refs.put(f.block, packSharers(f.sharers));
      else refs.del(f.block);
    }
  });
}
