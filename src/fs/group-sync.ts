/**
 * Group commit for fsync: callers that arrive while a sync runs share the next one, which
 * starts after the running one ends (so it covers every write acknowledged before the call).
 * N concurrent fsync/close calls cost at most two store syncs instead of N.
 */
export class GroupSync {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private count = 0;

  constructor(private readonly syncFn: () => Promise<void>) {}

  /** Store syncs started so far (for tests and stats). */
  get syncCount(): number {
    return this.count;
  }

  sync(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.running) return this.start();
    const after = this.running.then(noop, noop);
    this.queued = after.then(() => {
      this.queued = null;
      return this.start();
    });
    return this.queued;
  }

  private start(): Promise<void> {
    this.count++;
    const p: Promise<void> = Promise.resolve()
      .then(this.syncFn)
      .finally(() => {
        if (this.running === p) this.running = null;
      });
    this.running = p;
    return p;
  }
}

function noop(): void {}
