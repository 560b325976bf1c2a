import type { Command } from '../command';
import { printJson, withPool } from '../output';

export const command: Command = {
  name: 'commit',
  summary: "commit a container's changes into a new read-only image layer",
  usage: 'CONTAINER IMAGE',
  description: 'O(1): the image takes over the container\'s changes and the container continues on top of it.\nThe container must not be mounted read-write.',
  options: [],
  minArgs: 2,
  maxArgs: 2,
  async run(ctx) {
    const info = await withPool(ctx, (pool) => pool.store.commit(ctx.args[0], ctx.args[1]));
    if (ctx.json) printJson(ctx, info);
    else ctx.stdout.write(`Committed ${ctx.args[0]} as image ${info.name} (id ${info.id}); ${ctx.args[0]} now runs on ${info.name}.\n`);
    return 0;
  },
};
