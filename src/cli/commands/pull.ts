import { parseCredsOption, type RegistryCredentials } from '../../image/registry-credentials';
import { pullImage, type PullLayerProgress, type PullLayerState, type PullResult } from '../../image/registry-pull';
import { parsePlatform } from '../../image/registry-source';
import type { Command, CommandContext, OptionSpec } from '../command';
import { printJson, stringOpt, withPool } from '../output';
import { formatBytes, LayerProgress, type LayerLine } from '../progress';

const STATUS: Record<PullLayerState, string> = {
  waiting: 'Waiting', downloading: 'Downloading', applying: 'Applying', done: 'Pull complete', exists: 'Already exists',
};

/** The connection options pull and push share. */
export const REGISTRY_OPTIONS: OptionSpec[] = [
  { name: 'plain-http', type: 'boolean', description: 'talk to the registry over plain HTTP' },
  { name: 'creds', type: 'string', valueName: 'USER:PASS', description: 'registry credentials' },
];

export function registryConnection(ctx: CommandContext): { plainHttp: boolean; credentials: RegistryCredentials | null } {
  const credsText = stringOpt(ctx, 'creds');
  return { plainHttp: ctx.opts['plain-http'] === true, credentials: credsText !== undefined ? parseCredsOption(credsText) : null };
}

export function pullLines(layers: readonly PullLayerProgress[]): LayerLine[] {
  return layers.map((l) => ({
    id: l.digest,
    title: l.digest.replace(/^sha256:/, '').slice(0, 12),
    status: STATUS[l.state],
    bytesDone: l.downloadedBytes,
    bytesTotal: l.sizeBytes,
    active: (l.state === 'downloading' || l.state === 'applying') && l.downloadedBytes < l.sizeBytes,
  }));
}

export const command: Command = {
  name: 'pull',
  summary: 'pull an image from a registry into image layers',
  usage: 'REF [--name NAME] [--platform OS/ARCH] [--plain-http] [--creds USER:PASS]',
  description: [
    'REF is an image reference as Docker writes it: [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST].',
    'Without a host it is Docker Hub (debian = docker.io/library/debian:latest); without a tag,',
    'latest. A multi-platform image gives the manifest for --platform (default linux and this',
    "host's architecture).",
    '',
    'Layers stream from the registry into the pool: each is verified (blob digest, diff id) and',
    'applied while it downloads, a few download at once, and a broken connection resumes where',
    'it stopped. Layers already in the pool (same ChainID) are not fetched. The image is named',
    'NAME, else REF as Docker shows it (debian:latest, HOST:PORT/REPO:TAG); other layers and',
    'labels as dmfs import gives them. A failed pull leaves the pool as it was.',
    '',
    'Credentials: --creds, else $REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR/containers/auth.json',
    '(skopeo/podman login), else ~/.docker/config.json (docker login). TLS trusts the system CAs',
    'and, for HOST[:PORT], /etc/docker/certs.d/HOST[:PORT]/ca.crt and',
    '/etc/containers/certs.d/HOST[:PORT]/*.crt. --plain-http speaks HTTP without TLS.',
  ].join('\n'),
  options: [
    { name: 'name', type: 'string', valueName: 'NAME', description: 'name of the pulled image (its top layer)' },
    { name: 'platform', type: 'string', valueName: 'OS/ARCH', description: 'platform to pull from a multi-platform image (OS/ARCH[/VARIANT])' },
    ...REGISTRY_OPTIONS,
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const platformText = stringOpt(ctx, 'platform');
    const platform = platformText !== undefined ? parsePlatform(platformText) : undefined;
    const bars = new LayerProgress(ctx.stderr as NodeJS.WriteStream, { enabled: ctx.json ? false : undefined });
    let result: PullResult;
    try {
      result = await withPool(ctx, (pool) =>
        pullImage(pool.store, ctx.args[0], {
          name: stringOpt(ctx, 'name'),
          platform,
          ...registryConnection(ctx),
          onLayer: (layers) => bars.update(pullLines(layers)),
          onWarning: (m) => ctx.stderr.write(`warning: ${m}\n`),
        }),
      );
    } finally {
      bars.done();
    }
    if (ctx.json) {
      printJson(ctx, result);
      return 0;
    }
    const imported = result.layers.filter((l) => !l.reused);
    ctx.stdout.write(
      `Pulled ${result.reference} as ${result.name} (${result.platform}, manifest ${result.manifestDigest}): ` +
        `${result.layers.length} layer(s), ${imported.length} fetched, ${result.layers.length - imported.length} already in the pool; ` +
        `${formatBytes(result.bytesDownloaded)} downloaded in ${(result.durationMs / 1000).toFixed(1)}s` +
        `${result.resumes > 0 ? `, ${result.resumes} resumed download(s)` : ''}\n`,
    );
    for (const l of result.layers) ctx.stdout.write(`  ${l.reused ? 'reused ' : 'fetched'}  ${l.name}  ${l.diffId ?? ''}\n`);
    return 0;
  },
};
