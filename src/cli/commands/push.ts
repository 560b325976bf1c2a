import { pushImage, type PushLayerProgress, type PushLayerState, type PushResult } from '../../image/registry-push';
import type { Command } from '../command';
import { printJson, withPool } from '../output';
import { formatBytes, LayerProgress, type LayerLine } from '../progress';
import { REGISTRY_OPTIONS, registryConnection } from './pull';

const STATUS: Record<PushLayerState, string> = {
  waiting: 'Waiting', checking: 'Checking', uploading: 'Pushing', uploaded: 'Pushed', mounted: 'Mounted', exists: 'Layer exists',
};

function pushLines(layers: readonly PushLayerProgress[]): LayerLine[] {
  return layers.map((l) => ({
    id: l.name, title: l.name, status: STATUS[l.state], bytesDone: l.uploadedBytes, bytesTotal: null, active: l.state === 'uploading',
  }));
}

export const command: Command = {
  name: 'push',
  summary: 'push an image to a registry',
  usage: 'IMAGE REF [--plain-http] [--creds USER:PASS]',
  description: [
    'Sends the image dmfs save would write (gzip OCI layers bottom up, the config, an OCI',
    'manifest) to REF, [HOST[:PORT]/]REPOSITORY[:TAG] as Docker writes it (default tag latest).',
    '',
    'Blobs the repository has already are not sent: a layer pulled or imported with its',
    'compressed blob is checked under that blob; one pulled from (or pushed to) another repository',
    'of the same registry is mounted from there; others are exported and streamed to the registry in chunks',
    'while their digests are computed. The blob a layer was pushed as is remembered in its label',
    'dmfs.pushed_blob, so pushing the same image again uploads no layer.',
    '',
    'Credentials and TLS as for dmfs pull (--creds, containers auth.json, ~/.docker/config.json;',
    '/etc/docker/certs.d and /etc/containers/certs.d; --plain-http).',
  ].join('\n'),
  options: REGISTRY_OPTIONS,
  minArgs: 2,
  maxArgs: 2,
  async run(ctx) {
    const bars = new LayerProgress(ctx.stderr as NodeJS.WriteStream, { enabled: ctx.json ? false : undefined });
    let result: PushResult;
    try {
      result = await withPool(ctx, (pool) =>
        pushImage(pool.store, ctx.args[0], ctx.args[1], {
          ...registryConnection(ctx),
          onLayer: (layers) => bars.update(pushLines(layers)),
        }),
      );
    } finally {
      bars.done();
    }
    if (ctx.json) {
      printJson(ctx, result);
      return 0;
    }
    const count = (a: string): number => result.layers.filter((l) => l.action === a).length;
    ctx.stdout.write(
      `Pushed ${result.image} to ${result.reference} (manifest ${result.manifestDigest}): ${result.layers.length} layer(s), ` +
        `${count('uploaded')} uploaded, ${count('mounted')} mounted, ${count('exists')} already there; ` +
        `${formatBytes(result.bytesUploaded)} uploaded in ${(result.durationMs / 1000).toFixed(1)}s\n`,
    );
    for (const l of result.layers) ctx.stdout.write(`  ${l.action.padEnd(8)}  ${l.name}  ${l.digest}\n`);
    return 0;
  },
};
