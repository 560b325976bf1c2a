import { tempPool } from '../../support/temp-pool';

test('a sync asked while another runs waits for a flush that started after it', async () => {
  const { pool, remove } = await tempPool();
  try {
    const order: string[] = [];
    const env = pool.thinPool.env;
    const real = env.sync.bind(env);
    const spy = jest.spyOn(env, 'sync').mockImplementation(async () => {
      order.push('flush-start');
      await new Promise((r) => setTimeout(r, 20));
      await real();
      order.push('flush-end');
    });
    try {
      const first = pool.thinPool.sync();
      while (!order.includes('flush-start')) await new Promise((r) => setTimeout(r, 1));
      order.push('second-asked');
      const second = pool.thinPool.sync();
      const third = pool.thinPool.sync();
      await Promise.all([first, second, third]);
      // A flush was running when the second was asked: one more follows, shared with the third.
      expect(order).toEqual(['flush-start', 'second-asked', 'flush-end', 'flush-start', 'flush-end']);
    } finally {
      spy.mockRestore();
    }
  } finally {
    await remove();
  }
});
