/**
 * Where registry credentials come from, first found wins:
 *
 * 1. `--creds USER:PASS` (the Node API's `credentials`);
 * 2. `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json` (containers-
 *    auth.json, what podman, skopeo and buildah log in to);
 * 3. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (what `docker login`
 *    writes).
 *
 * Both files hold `{"auths": {KEY: {"auth": base64("user:password")}}}`; KEY is a
 * registry host (Docker Hub also under `https://index.docker.io/v1/`), and in
 * containers-auth.json may name a repository namespace (`host/team`), the longest match
 * winning. An entry with `identitytoken` holds an OAuth refresh token for the token
 * server. Credential helpers (`credsStore`, `credHelpers`) are not run: the error for a
 * refused request says so when the config names one for the registry.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import { credentialKeys } from './registry-ref';

export interface RegistryCredentials {
  username: string;
  password: string;
  /** OAuth2 refresh token (`identitytoken`), sent to a token server instead of the password. */
  identityToken?: string;
  /** Where they came from, for messages: `--creds`, or a file path. */
  origin: string;
}

export interface CredentialLookup {
  credentials: RegistryCredentials | null;
  /** A credential helper named for this registry that dmfs does not run (for messages). */
  helper: string | null;
  /** Files consulted, for messages. */
  searched: string[];
}

/** Splits `USER:PASS` (the password may hold colons). */
export function parseCredsOption(text: string): RegistryCredentials {
  const colon = text.indexOf(':');
  if (colon <= 0) throw dmfsError('USAGE', '--creds takes USER:PASSWORD');
  return { username: text.slice(0, colon), password: text.slice(colon + 1), origin: '--creds' };
}

function authFiles(env: NodeJS.ProcessEnv): { file: string; kind: 'containers' | 'docker' }[] {
  const files: { file: string; kind: 'containers' | 'docker' }[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push({ file: env.REGISTRY_AUTH_FILE, kind: 'containers' });
  else if (env.XDG_RUNTIME_DIR) files.push({ file: path.join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'), kind: 'containers' });
  const dockerDir = env.DOCKER_CONFIG ?? path.join(env.HOME ?? os.homedir(), '.docker');
  files.push({ file: path.join(dockerDir, 'config.json'), kind: 'docker' });
  return files;
}

function readJsonObject(file: string): Record<string, unknown> | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw dmfsError('BAD_CONFIG', `cannot read registry credentials file ${file}: ${(err as Error).message}`, err);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw dmfsError('BAD_CONFIG', `registry credentials file ${file} is not valid JSON`, err);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw dmfsError('BAD_CONFIG', `registry credentials file ${file} is not a JSON object`);
  return parsed as Record<string, unknown>;
}

function decodeEntry(entry: unknown, file: string, key: string): RegistryCredentials | null {
  if (typeof entry !== 'object' || entry === null) return null;
  const e = entry as { auth?: unknown; username?: unknown; password?: unknown; identitytoken?: unknown };
  let username: string | undefined;
  let password: string | undefined;
  if (typeof e.auth === 'string' && e.auth.length > 0) {
    const plain = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon < 0) throw dmfsError('BAD_CONFIG', `${file}: auths[${JSON.stringify(key)}].auth is not base64 of USER:PASSWORD`);
    username = plain.slice(0, colon);
    password = plain.slice(colon + 1);
  } else if (typeof e.username === 'string' && typeof e.password === 'string') {
    username = e.username;
    password = e.password;
  }
  const identityToken = typeof e.identitytoken === 'string' && e.identitytoken.length > 0 ? e.identitytoken : undefined;
  if (username === undefined && identityToken === undefined) return null;
  return { username: username ?? '', password: password ?? '', ...(identityToken ? { identityToken } : {}), origin: file };
}

/** Credentials for `registry` (and `repository`, for containers-auth namespaces), or none. */
export function lookupCredentials(
  registry: string, repository: string | undefined, explicit: RegistryCredentials | null, env: NodeJS.ProcessEnv = process.env,
): CredentialLookup {
  const searched: string[] = [];
  let helper: string | null = null;
  if (explicit) return { credentials: explicit, helper, searched };
  for (const { file, kind } of authFiles(env)) {
    searched.push(file);
    const doc = readJsonObject(file);
    if (doc === null) continue;
    const auths = typeof doc.auths === 'object' && doc.auths !== null ? (doc.auths as Record<string, unknown>) : {};
    for (const key of credentialKeys(registry, kind === 'containers' ? repository : undefined)) {
      const found = decodeEntry(auths[key], file, key);
      if (found) return { credentials: found, helper, searched };
    }
    if (helper === null) {
      const helpers = typeof doc.credHelpers === 'object' && doc.credHelpers !== null ? (doc.credHelpers as Record<string, unknown>) : {};
      const named = credentialKeys(registry).map((k) => helpers[k]).find((h) => typeof h === 'string');
      if (typeof named === 'string') helper = `docker-credential-${named} (credHelpers in ${file})`;
      else if (typeof doc.credsStore === 'string') helper = `docker-credential-${doc.credsStore} (credsStore in ${file})`;
    }
  }
  return { credentials: null, helper, searched };
}
