import { GroupSync } from '../../../src/fs/group-sync';

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

describe('GroupSync', () => {
  it('runs one sync for one caller', async () => {
    let n = 0;
    const g = new GroupSync(async () => void n++);
    await g.sync();
    expect(n).toBe(1);
  });

  it('callers arriving during a sync share one follow-up sync that starts after it', async () => {
    const rounds: ReturnType<typeof deferred>[] = [];
    const g = new GroupSync(() => {
      const d = deferred();
      rounds.push(d);
      return d.promise;
    });
    const first = g.sync();
    await Promise.resolve();
    expect(rounds.length).toBe(1);
    const waiting = Array.from({ length: 10 }, () => g.sync());
    await Promise.resolve();
    expect(rounds.length).toBe(1); // the follow-up must not overlap the running sync
    rounds[0].resolve();
    await first;
    await new Promise((r) => setImmediate(r));
    expect(rounds.length).toBe(2);
    let settled = false;
    const all = Promise.all(waiting).then(() => (settled = true));
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // they wait for the second round, which covers their writes
    rounds[1].resolve();
    await all;
    expect(g.syncCount).toBe(2);
  });

  it('gives a failure to the callers of that round only', async () => {
    let fail = true;
    const g = new GroupSync(async () => {
      if (fail) throw new Error('disk gone');
    });
    await expect(g.sync()).rejects.toThrow('disk gone');
    fail = false;
    await expect(g.sync()).resolves.toBeUndefined();
  });
});
