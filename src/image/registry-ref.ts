/**
 * Image references as Docker writes them: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`.
 *
 * - HOST is the first `/`-separated component when it holds a `.` or a `:`, is
 *   `localhost`, or has an upper-case letter; otherwise the reference is on Docker Hub
 *   (`docker.io`), where a one-component path lives under `library/` (`debian` →
 *   `docker.io/library/debian`). `index.docker.io` is another spelling of `docker.io`.
 * - Without a tag or digest the tag is `latest`. With a digest, the digest is what is
 *   pulled (a tag beside it is kept only for the name).
 * - Path components are lower-case alphanumerics joined by `.`, `_`, `__` or dashes;
 *   tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (the distribution reference grammar).
 *
 * Docker Hub is served from `registry-1.docker.io` (`endpointHost`), and its credentials
 * are stored under `https://index.docker.io/v1/` in Docker's config (`credentialKeys`).
 */
import { dmfsError } from '../errors';
import { parseDigest } from './digest';

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';
const DOCKER_HUB_AUTH_KEY = 'https://index.docker.io/v1/';

const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
const MAX_NAME_CHARS = 255;

export interface RegistryRef {
  /** `host[:port]` as written (`docker.io` for Docker Hub). */
  registry: string;
  /** Repository path, e.g. `library/debian`. */
  repository: string;
  /** Tag, when the reference has one (`latest` when it has neither tag nor digest). */
  tag: string | null;
  /** Digest, when given (`@sha256:...`). */
  digest: string | null;
}

/** Parses a reference; a malformed one is USAGE (exit 2). */
export function parseRegistryRef(text: string): RegistryRef {
  const bad = (why: string): never => {
    throw dmfsError('USAGE', `invalid image reference ${JSON.stringify(text)}: ${why}`);
  };
  if (text.length === 0) bad('empty');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) bad('give HOST[:PORT]/REPOSITORY[:TAG], without a URL scheme (plain HTTP is --plain-http)');
  let rest = text;
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    try {
      parseDigest(digest, 'reference digest');
    } catch (err) {
      bad((err as Error).message);
    }
  }
  let registry = DOCKER_HUB;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      if (!HOST_RE.test(first)) bad(`${JSON.stringify(first)} is not a registry host[:port]`);
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag: string | null = null;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0 && !rest.slice(colon).includes('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) bad(`${JSON.stringify(tag)} is not a valid tag`);
  }
  if (rest.length === 0) bad('no repository');
  const parts = rest.split('/');
  for (const p of parts) {
    if (!PATH_COMPONENT_RE.test(p)) bad(`repository component ${JSON.stringify(p)} must be lower-case letters and digits joined by '.', '_', '__' or '-'`);
  }
  if (registry === 'index.docker.io') registry = DOCKER_HUB;
  const repository = registry === DOCKER_HUB && parts.length === 1 ? `library/${rest}` : rest;
  if (registry.length + 1 + repository.length > MAX_NAME_CHARS) bad(`longer than ${MAX_NAME_CHARS} characters`);
  if (tag === null && digest === null) tag = 'latest';
  return { registry, repository, tag, digest };
}

/** `host/repository` in full (`docker.io/library/debian`). */
export function repositoryName(ref: RegistryRef): string {
  return `${ref.registry}/${ref.repository}`;
}

/** The full reference: `host/repository[:tag][@digest]`. */
export function formatRegistryRef(ref: RegistryRef): string {
  return `${repositoryName(ref)}${ref.tag !== null ? `:${ref.tag}` : ''}${ref.digest !== null ? `@${ref.digest}` : ''}`;
}

/**
 * The short form Docker shows: Docker Hub's host and `library/` left out
 * (`debian:bookworm`, `user/app:1`), other registries in full.
 */
export function familiarName(ref: RegistryRef): string {
  let name = repositoryName(ref);
  if (ref.registry === DOCKER_HUB) name = ref.repository.startsWith('library/') ? ref.repository.slice('library/'.length) : ref.repository;
  return `${name}${ref.tag !== null ? `:${ref.tag}` : ''}${ref.digest !== null ? `@${ref.digest}` : ''}`;
}

/** `host[:port]` that answers the HTTP API for `registry`. */
export function endpointHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_ENDPOINT : registry;
}

/**
 * Keys that may hold credentials for `registry` in Docker's config.json and
 * containers-auth.json, most specific first: `host/repo/path` prefixes (containers-auth
 * only), `host`, `https://host`, `http://host`, `host/v2/`, and Docker Hub's legacy key.
 */
export function credentialKeys(registry: string, repository?: string): string[] {
  const keys: string[] = [];
  if (repository !== undefined) {
    const parts = repository.split('/');
    for (let n = parts.length; n >= 1; n--) keys.push(`${registry}/${parts.slice(0, n).join('/')}`);
  }
  if (registry === DOCKER_HUB) {
    keys.push(DOCKER_HUB, DOCKER_HUB_AUTH_KEY, 'index.docker.io', 'https://index.docker.io', DOCKER_HUB_ENDPOINT);
  } else {
    keys.push(registry, `https://${registry}`, `http://${registry}`, `${registry}/v2/`, `https://${registry}/v2/`, `https://${registry}/v1/`);
  }
  return keys;
}
