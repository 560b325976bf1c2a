import { packRecord, unpackRecord } from './codec';
import type { Table } from './metadata-env';

/** pool-meta 'backup:pending': metadata changed since the last backup (see metadata-backup.ts). */
export interface BackupPending {
  v: 1;
  /** Bumped by every change: a backup clears the mark only if no change came in meanwhile. */
  seq: number;
  reasons: string[];
}
const BACKUP_PENDING_KEY = 'backup:pending';

/**
 * The mark that says a backup is due, and why. Set in the transaction of every change
 * that a backup should keep; cleared by the backup only if no change came in while it
 * copied (the copy may miss that change: the mark stays for the next close).
 */
export class BackupMark {
  constructor(private readonly meta: Table) {}

  /** Inside txn: O(1), one get and one put. `replace`: the reasons so far do not apply (a restored copy carries its own backup's mark). */
  note(reason: string, opts: { replace?: boolean } = {}): void {
    const prev = this.read();
    const reasons = opts.replace ? [] : prev?.reasons ?? [];
    this.meta.put(BACKUP_PENDING_KEY, packRecord({
      v: 1, seq: (prev?.seq ?? 0) + 1, reasons: reasons.includes(reason) ? reasons : [...reasons, reason],
    } satisfies BackupPending));
  }

  isSet(): boolean {
    return this.meta.has(BACKUP_PENDING_KEY);
  }

  read(): BackupPending | null {
    const raw = this.meta.get(BACKUP_PENDING_KEY);
    return raw ? unpackRecord<BackupPending>(raw) : null;
  }

  /** Inside txn: clears the mark if it is still the one a backup read before copying. */
  clearIfUnchanged(seen: BackupPending): void {
    if (this.read()?.seq === seen.seq) this.meta.del(BACKUP_PENDING_KEY);
  }
}
