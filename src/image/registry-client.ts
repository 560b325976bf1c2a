/**
 * The HTTP API of an OCI distribution registry (the Docker Registry HTTP API V2), as much
 * as pull and push need: manifests (GET with Accept, PUT), blobs (HEAD, GET with Range
 * resume), uploads (POST, PATCH chunks, PUT ?digest=, cross-repository mount), tags/list.
 * HTTP is undici's; one connection pool per client.
 *
 * Auth (the distribution token spec): a request goes out with what the last challenge
 * asked for; a 401 answers with `WWW-Authenticate`:
 * - `Basic realm=...`: the request is sent again with the credentials;
 * - `Bearer realm=R,service=S,scope=...`: a token is fetched from R (`GET R?service=S&
 *   scope=...`, with basic credentials when there are some; `POST` grant_type=
 *   refresh_token for an identity token), cached per scope set, and the request sent
 *   again with it. Without credentials the token is anonymous (public pulls).
 * A second 401 is REGISTRY_AUTH, naming the registry and how to pass credentials.
 *
 * TLS: Node's CA store, plus for HOST[:PORT] every `ca.crt` / `*.crt` in
 * `/etc/docker/certs.d/HOST[:PORT]/` and `/etc/containers/certs.d/HOST[:PORT]/`, and a
 * client certificate there (`client.cert` + `client.key`) when present. A certificate
 * that does not verify is REGISTRY_TLS, naming those directories.
 *
 * Redirects (blob GETs go to storage backends): followed for GET and HEAD, up to 5; the
 * Authorization header goes only to the registry's own origin.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { Agent, type Dispatcher, request } from 'undici';
import { dmfsError, DmfsError, isDmfsError } from '../errors';
import { lookupCredentials, type RegistryCredentials } from './registry-credentials';
import { endpointHost } from './registry-ref';

export const DEFAULT_CERTS_DIRS: readonly string[] = ['/etc/docker/certs.d', '/etc/containers/certs.d'];

export const MANIFEST_MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

const ACCEPT_MANIFESTS = [
  MANIFEST_MEDIA_TYPES.ociIndex, MANIFEST_MEDIA_TYPES.ociManifest,
  MANIFEST_MEDIA_TYPES.dockerList, MANIFEST_MEDIA_TYPES.dockerManifest,
].join(', ');

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const MAX_REDIRECTS = 5;
/** Attempts at one blob download (the first and the Range resumes). */
const MAX_BLOB_ATTEMPTS = 6;
const USER_AGENT = `dmfs/${(require('../../package.json') as { version: string }).version}`;

export interface RegistryClientOptions {
  /** `host[:port]` as in the reference (`docker.io` for Docker Hub). */
  registry: string;
  /** Speak plain HTTP (`--plain-http`), as ctr and nerdctl. */
  plainHttp?: boolean;
  /** Credentials given explicitly (`--creds`); else looked up in the auth files. */
  credentials?: RegistryCredentials | null;
  /** The repository the client is for: containers-auth.json may hold credentials per namespace. */
  repository?: string;
  /** Roots of the per-host certificate directories; default DEFAULT_CERTS_DIRS. */
  certsDirs?: readonly string[];
  env?: NodeJS.ProcessEnv;
  /** Pause before a Range resume, ms (tests shorten it); default 200 × attempt. */
  resumeDelayMs?: number;
}

export interface ManifestResponse {
  body: Buffer;
  mediaType: string | null;
  /** `Docker-Content-Digest`, when the registry sent it. */
  digest: string | null;
}

interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

interface SendOptions {
  headers?: Record<string, string>;
  body?: Buffer | string | null;
  /** Token scopes the request needs, e.g. `repository:library/debian:pull`. */
  scopes: string[];
  /** Statuses the caller handles itself (no error raised for them). */
  expect: number[];
  followRedirects?: boolean;
}

interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

/** Parses a `WWW-Authenticate` header: `Scheme k="v", k2=v2`. */
export function parseChallenge(header: string): Challenge | null {
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  if (scheme !== 'basic' && scheme !== 'bearer') return null;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2])) !== null) {
    if (p[0].length === 0) break;
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  }
  return { scheme, params };
}

function headerOf(headers: Response['headers'], name: string): string | null {
  const v = headers[name];
  if (v === undefined) return null;
  return Array.isArray(v) ? v[0] ?? null : v;
}

/** The registry's error document (`{"errors":[{"code","message"}]}`), as one line. */
function describeErrorBody(text: string): string {
  try {
    const doc = JSON.parse(text) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
    if (Array.isArray(doc.errors) && doc.errors.length > 0) {
      return doc.errors.map((e) => [e.code, e.message].filter((s) => typeof s === 'string' && s.length > 0).join(': ')).join('; ');
    }
  } catch {
    /* not JSON */
  }
  return text.replace(/\s+/g, ' ').trim().slice(0, 200);
}

async function readBody(body: Response['body'], maxBytes: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of body) {
    n += (chunk as Buffer).length;
    if (n > maxBytes) {
      body.destroy();
      throw dmfsError('REGISTRY_ERROR', `${what} is larger than ${maxBytes} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

async function errorText(res: Response): Promise<string> {
  try {
    return describeErrorBody((await readBody(res.body, MAX_ERROR_BODY_BYTES, 'error body')).toString('utf8'));
  } catch {
    return '';
  }
}

const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_REJECTED', 'INVALID_CA',
]);
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EPIPE',
  'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
]);

/** A network error during a body (a cut connection): worth a Range resume. */
function isTransient(err: unknown): boolean {
  if (isDmfsError(err)) return err.code === 'REGISTRY_UNREACHABLE';
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return true;
  const message = (err as Error | null)?.message ?? '';
  return /terminated|other side closed|premature close|aborted/i.test(message);
}

export class RegistryClient {
  readonly registry: string;
  /** `https://host[:port]` (or http with plainHttp). */
  readonly baseUrl: string;
  private readonly host: string;
  private readonly plainHttp: boolean;
  private readonly credentials: RegistryCredentials | null;
  private readonly credentialHelper: string | null;
  private readonly searchedFiles: string[];
  private readonly certsDirs: readonly string[];
  private readonly dispatcher: Agent;
  private readonly redirectDispatcher: Agent;
  private readonly resumeDelayMs: number | undefined;
  /** The scheme the last challenge asked for (basic sent pre-emptively once seen). */
  private basic = false;
  /** Tokens by sorted scope set. */
  private readonly tokens = new Map<string, string>();
  private bearerChallenge: Challenge | null = null;

  constructor(opts: RegistryClientOptions) {
    this.registry = opts.registry;
    this.host = endpointHost(opts.registry);
    this.plainHttp = opts.plainHttp === true;
    this.baseUrl = `${this.plainHttp ? 'http' : 'https'}://${this.host}`;
    const found = lookupCredentials(opts.registry, opts.repository, opts.credentials ?? null, opts.env ?? process.env);
    this.credentials = found.credentials;
    this.credentialHelper = found.helper;
    this.searchedFiles = found.searched;
    this.certsDirs = opts.certsDirs ?? DEFAULT_CERTS_DIRS;
    this.resumeDelayMs = opts.resumeDelayMs;
    this.dispatcher = new Agent({ connect: this.plainHttp ? {} : this.tlsOptions(), keepAliveTimeout: 10_000 });
    this.redirectDispatcher = new Agent({ keepAliveTimeout: 10_000 });
  }

  /** Per-host CA and client certificates from the certs.d directories. */
  private tlsOptions(): tls.ConnectionOptions {
    const cas: string[] = [];
    let cert: Buffer | undefined;
    let key: Buffer | undefined;
    for (const root of this.certsDirs) {
      const dir = path.join(root, this.registry);
      let names: string[];
      try {
        names = fs.readdirSync(dir).sort();
      } catch {
        continue;
      }
      for (const name of names) {
        const file = path.join(dir, name);
        if (name.endsWith('.crt')) cas.push(fs.readFileSync(file, 'utf8'));
        else if (name.endsWith('.cert') && cert === undefined) {
          const keyFile = path.join(dir, `${name.slice(0, -'.cert'.length)}.key`);
          if (fs.existsSync(keyFile)) {
            cert = fs.readFileSync(file);
            key = fs.readFileSync(keyFile);
          }
        }
      }
    }
    const out: tls.ConnectionOptions = {};
    if (cas.length > 0) out.ca = [...tls.rootCertificates, ...extraCaFromEnv(), ...cas];
    if (cert && key) {
      out.cert = cert;
      out.key = key;
    }
    return out;
  }

  private caDirs(): string {
    return this.certsDirs.map((d) => `${path.join(d, this.registry)}/${d.includes('docker') ? 'ca.crt' : '*.crt'}`).join(' or ');
  }

  /** Raises the error a failed connection deserves. */
  private networkError(err: unknown, url: URL): DmfsError {
    if (isDmfsError(err)) return err;
    const code = String((err as { code?: unknown }).code ?? '');
    const message = (err as Error).message ?? String(err);
    if (TLS_VERIFY_CODES.has(code)) {
      return dmfsError('REGISTRY_TLS',
        `TLS: the certificate of ${url.host} does not verify (${code}: ${message}). ` +
        `Put the CA that signed it in ${this.caDirs()}, or, for a registry that speaks plain HTTP, give --plain-http`, err);
    }
    const sslReason = /(wrong version number|packet length too long|unknown protocol)/i.exec(message)?.[1];
    if (sslReason !== undefined || code === 'ERR_SSL_WRONG_VERSION_NUMBER') {
      return dmfsError('REGISTRY_TLS', `TLS: ${url.host} does not answer TLS (${sslReason ?? code}); if it speaks plain HTTP, give --plain-http`, err);
    }
    if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || code === 'EPROTO') {
      return dmfsError('REGISTRY_TLS', `TLS with ${url.host} failed (${code}: ${message}); CA certificates for it go in ${this.caDirs()}`, err);
    }
    if (UNREACHABLE_CODES.has(code) || code.startsWith('UND_ERR')) {
      return dmfsError('REGISTRY_UNREACHABLE', `cannot reach the registry at ${url.origin} (${code || message})`, err);
    }
    return dmfsError('REGISTRY_UNREACHABLE', `request to ${url.origin} failed: ${message}`, err);
  }

  private async rawRequest(method: string, url: URL, headers: Record<string, string>, body: Buffer | string | null, dispatcher: Dispatcher): Promise<Response> {
    try {
      const res = await request(url, {
        method: method as Dispatcher.HttpMethod,
        headers: { 'user-agent': USER_AGENT, ...headers },
        body,
        dispatcher,
        headersTimeout: 120_000,
        bodyTimeout: 120_000,
        // Bigger reads of a blob body: fewer, larger chunks through the layer pipeline.
        highWaterMark: 1 << 20,
      });
      return { status: res.statusCode, headers: res.headers, body: res.body, url };
    } catch (err) {
      throw this.networkError(err, url);
    }
  }

  private authHeader(scopes: string[]): string | null {
    if (this.bearerChallenge) {
      const token = this.tokens.get(scopeKey(scopes));
      if (token) return `Bearer ${token}`;
    }
    if (this.basic && this.credentials) {
      return `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
    }
    return null;
  }

  /** One request with auth (one retry after a challenge) and redirects; statuses not in `expect` raise. */
  async send(method: string, pathOrUrl: string, opts: SendOptions): Promise<Response> {
    let url = new URL(pathOrUrl, this.baseUrl);
    let challenged = false;
    for (let redirects = 0; ; ) {
      const own = url.origin === new URL(this.baseUrl).origin;
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      const auth = own ? this.authHeader(opts.scopes) : null;
      if (auth) headers.authorization = auth;
      const res = await this.rawRequest(method, url, headers, opts.body ?? null, own ? this.dispatcher : this.redirectDispatcher);
      if (res.status === 401 && own && !challenged) {
        challenged = true;
        const challenge = parseChallenge(headerOf(res.headers, 'www-authenticate') ?? '');
        await res.body.dump().catch(() => undefined);
        if (challenge === null) throw await this.authError(res, 'it sent no challenge dmfs understands');
        await this.answer(challenge, opts.scopes);
        continue;
      }
      if (opts.followRedirects && [301, 302, 303, 307, 308].includes(res.status) && !opts.expect.includes(res.status)) {
        const location = headerOf(res.headers, 'location');
        await res.body.dump().catch(() => undefined);
        if (!location || ++redirects > MAX_REDIRECTS) throw dmfsError('REGISTRY_ERROR', `${method} ${url.href}: too many redirects`);
        url = new URL(location, url);
        continue;
      }
      if (opts.expect.includes(res.status)) return res;
      if (res.status === 401 || res.status === 403) throw await this.authError(res);
      const detail = await errorText(res);
      throw dmfsError('REGISTRY_ERROR', `${this.registry}: ${method} ${url.pathname} answered ${res.status}${detail ? ` (${detail})` : ''}${this.hint(res.status, detail)}`);
    }
  }

  private hint(status: number, detail: string): string {
    if (status === 400 && /HTTP request to an HTTPS server/i.test(detail)) return '; the registry speaks HTTPS: drop --plain-http';
    if (status === 429) return '; the registry limits request rates: try again later, or log in for a higher limit';
    return '';
  }

  /** Follows a challenge: Basic needs credentials; Bearer fetches a token for the scopes. */
  private async answer(challenge: Challenge, scopes: string[]): Promise<void> {
    if (challenge.scheme === 'basic') {
      if (!this.credentials) throw await this.authError(null, 'it asks for a user name and password');
      this.basic = true;
      return;
    }
    this.bearerChallenge = challenge;
    const realm = challenge.params.realm;
    if (!realm) throw await this.authError(null, 'its Bearer challenge names no realm');
    const wanted = [...new Set([...scopes, ...(challenge.params.scope ? challenge.params.scope.split(' ') : [])])].filter((s) => s.length > 0);
    const token = await this.fetchToken(realm, challenge.params.service ?? null, wanted);
    this.tokens.set(scopeKey(scopes), token);
  }

  private async fetchToken(realm: string, service: string | null, scopes: string[]): Promise<string> {
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw dmfsError('REGISTRY_ERROR', `${this.registry}: token realm ${JSON.stringify(realm)} is not a URL`);
    }
    const creds = this.credentials;
    let res: Response;
    const dispatcher = realmUrl.origin === new URL(this.baseUrl).origin ? this.dispatcher : this.redirectDispatcher;
    if (creds?.identityToken) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'dmfs' });
      if (service) form.set('service', service);
      if (scopes.length > 0) form.set('scope', scopes.join(' '));
      res = await this.rawRequest('POST', realmUrl, { 'content-type': 'application/x-www-form-urlencoded' }, form.toString(), dispatcher);
    } else {
      if (service) realmUrl.searchParams.set('service', service);
      for (const s of scopes) realmUrl.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (creds) headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
      res = await this.rawRequest('GET', realmUrl, headers, null, dispatcher);
    }
    if (res.status === 401 || res.status === 403) {
      throw await this.authError(res, `its token server ${realmUrl.origin}${realmUrl.pathname} refused ${creds ? `the credentials from ${creds.origin}` : 'an anonymous token'}`);
    }
    if (res.status !== 200) {
      const detail = await errorText(res);
      throw dmfsError('REGISTRY_ERROR', `token server ${realmUrl.origin}${realmUrl.pathname} answered ${res.status}${detail ? ` (${detail})` : ''}`);
    }
    const doc = JSON.parse((await readBody(res.body, MAX_MANIFEST_BYTES, 'token response')).toString('utf8')) as { token?: unknown; access_token?: unknown };
    const token = typeof doc.token === 'string' && doc.token ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : null;
    if (!token) throw dmfsError('REGISTRY_ERROR', `token server ${realmUrl.origin} sent no token`);
    return token;
  }

  /** REGISTRY_AUTH naming the registry and how to pass credentials. */
  private async authError(res: Response | null, why?: string): Promise<DmfsError> {
    const detail = res ? await errorText(res) : '';
    const status = res ? ` (${res.status}${detail ? ` ${detail}` : ''})` : '';
    const reason = why ?? (res?.status === 403 ? 'access is denied' : this.credentials ? `the credentials from ${this.credentials.origin} were refused` : 'it wants credentials');
    const how = this.credentials
      ? `check the user name and password for ${this.registry} (from ${this.credentials.origin})`
      : `pass --creds USER:PASSWORD, or log in with \`docker login ${this.registry}\` or \`skopeo login ${this.registry}\` ` +
        `(dmfs reads ${this.searchedFiles.join(' and ')})${this.credentialHelper ? `; the credential helper ${this.credentialHelper} is not run by dmfs` : ''}`;
    return dmfsError('REGISTRY_AUTH', `registry ${this.registry} refused the request${status}: ${reason}; ${how}`);
  }

  // ---- endpoints ---------------------------------------------------------------------------

  /** GET a manifest by tag or digest; null when the registry has no such manifest. */
  async getManifest(repository: string, reference: string): Promise<ManifestResponse | null> {
    const res = await this.send('GET', `/v2/${repository}/manifests/${reference}`, {
      headers: { accept: ACCEPT_MANIFESTS }, scopes: [pullScope(repository)], expect: [200, 404], followRedirects: true,
    });
    if (res.status === 404) {
      await res.body.dump().catch(() => undefined);
      return null;
    }
    const body = await readBody(res.body, MAX_MANIFEST_BYTES, `manifest ${repository}:${reference}`);
    const type = headerOf(res.headers, 'content-type');
    return { body, mediaType: type ? type.split(';')[0].trim() : null, digest: headerOf(res.headers, 'docker-content-digest') };
  }

  /** Tags of a repository (first page), or null when the registry will not list them. */
  async listTags(repository: string, max = 100): Promise<string[] | null> {
    try {
      const res = await this.send('GET', `/v2/${repository}/tags/list?n=${max}`, { scopes: [pullScope(repository)], expect: [200, 404], followRedirects: true });
      if (res.status !== 200) {
        await res.body.dump().catch(() => undefined);
        return null;
      }
      const doc = JSON.parse((await readBody(res.body, MAX_MANIFEST_BYTES, 'tag list')).toString('utf8')) as { tags?: unknown };
      return Array.isArray(doc.tags) ? doc.tags.filter((t): t is string => typeof t === 'string') : [];
    } catch {
      return null;
    }
  }

  /** A small blob (a config) whole, at most maxBytes. */
  async getBlob(repository: string, digest: string, maxBytes: number): Promise<Buffer> {
    const res = await this.send('GET', `/v2/${repository}/blobs/${digest}`, { scopes: [pullScope(repository)], expect: [200, 404], followRedirects: true });
    if (res.status === 404) {
      await res.body.dump().catch(() => undefined);
      throw dmfsError('NOT_FOUND', `${this.registry}/${repository} has no blob ${digest}`);
    }
    return readBody(res.body, maxBytes, `blob ${digest}`);
  }

  /**
   * The bytes of a blob from `offsetBytes` on. A connection cut in the middle is resumed
   * with `Range: bytes=N-` (a registry that ignores Range and sends 200 again has its
   * first N bytes skipped); `sizeBytes` says when the blob is complete. The caller
   * verifies the digest; this only promises the bytes arrive in order, once each.
   */
  async *readBlob(repository: string, digest: string, sizeBytes: number, offsetBytes = 0, onResume?: (atBytes: number) => void): AsyncGenerator<Buffer> {
    let done = offsetBytes;
    for (let attempt = 1; ; attempt++) {
      if (done >= sizeBytes && attempt > 1) return;
      let res: Response;
      const headers: Record<string, string> = done > 0 ? { range: `bytes=${done}-` } : {};
      try {
        res = await this.send('GET', `/v2/${repository}/blobs/${digest}`, { headers, scopes: [pullScope(repository)], expect: [200, 206, 404, 416], followRedirects: true });
      } catch (err) {
        if (attempt < MAX_BLOB_ATTEMPTS && isTransient(err)) {
          await this.pause(attempt);
          onResume?.(done);
          continue;
        }
        throw err;
      }
      if (res.status === 404) {
        await res.body.dump().catch(() => undefined);
        throw dmfsError('NOT_FOUND', `${this.registry}/${repository} has no blob ${digest}`);
      }
      if (res.status === 416) {
        await res.body.dump().catch(() => undefined);
        throw dmfsError('REGISTRY_ERROR', `${this.registry}: blob ${digest} has no bytes from ${done} on (it is ${sizeBytes} bytes, says the manifest)`);
      }
      let skip = 0;
      if (done > 0 && res.status === 200) skip = done; // Range ignored: the whole blob again.
      if (res.status === 206) {
        const range = /^bytes (\d+)-/.exec(headerOf(res.headers, 'content-range') ?? '');
        if (!range || Number(range[1]) !== done) {
          res.body.destroy();
          throw dmfsError('REGISTRY_ERROR', `${this.registry}: asked for blob ${digest} from byte ${done}, got ${headerOf(res.headers, 'content-range') ?? 'no Content-Range'}`);
        }
      }
      try {
        for await (const raw of res.body) {
          let chunk = raw as Buffer;
          if (skip > 0) {
            if (chunk.length <= skip) {
              skip -= chunk.length;
              continue;
            }
            chunk = chunk.subarray(skip);
            skip = 0;
          }
          done += chunk.length;
          yield chunk;
        }
      } catch (err) {
        res.body.destroy();
        if (attempt < MAX_BLOB_ATTEMPTS && isTransient(err) && done < sizeBytes) {
          await this.pause(attempt);
          onResume?.(done);
          continue;
        }
        throw isTransient(err) ? this.networkError(err, res.url) : err;
      }
      if (done >= sizeBytes) return;
      // Ended early without an error (a proxy closing after Content-Length lied): resume.
      if (attempt >= MAX_BLOB_ATTEMPTS) return;
      await this.pause(attempt);
      onResume?.(done);
    }
  }

  private pause(attempt: number): Promise<void> {
    const ms = this.resumeDelayMs ?? 200 * attempt;
    return new Promise((r) => setTimeout(r, ms));
  }

  /** Size of a blob the repository holds, or null when it has none. */
  async statBlob(repository: string, digest: string, scopes = [pullScope(repository)]): Promise<number | null> {
    const res = await this.send('HEAD', `/v2/${repository}/blobs/${digest}`, { scopes, expect: [200, 404], followRedirects: true });
    await res.body.dump().catch(() => undefined);
    if (res.status === 404) return null;
    const len = headerOf(res.headers, 'content-length');
    return len !== null && /^\d+$/.test(len) ? Number(len) : -1;
  }

  /**
   * Starts an upload; with `mountFrom`, asks for a cross-repository mount of `digest`
   * first. Returns 'mounted' when the registry mounted it, else the upload location.
   */
  async startUpload(repository: string): Promise<{ mounted: false; location: string }>;
  async startUpload(repository: string, mount: { digest: string; from: string }): Promise<{ mounted: true } | { mounted: false; location: string }>;
  async startUpload(repository: string, mount?: { digest: string; from: string }): Promise<{ mounted: true } | { mounted: false; location: string }> {
    const scopes = [pushScope(repository), ...(mount ? [pullScope(mount.from)] : [])];
    const query = mount ? `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}` : '';
    const res = await this.send('POST', `/v2/${repository}/blobs/uploads/${query}`, { scopes, expect: [201, 202], headers: { 'content-length': '0' } });
    await res.body.dump().catch(() => undefined);
    if (res.status === 201 && mount) return { mounted: true };
    const location = headerOf(res.headers, 'location');
    if (!location) throw dmfsError('REGISTRY_ERROR', `${this.registry}: upload to ${repository} started without a Location`);
    return { mounted: false, location: new URL(location, this.baseUrl).href };
  }

  /** PATCHes one chunk at `offsetBytes`; returns the next upload location. */
  async uploadChunk(repository: string, location: string, chunk: Buffer, offsetBytes: number): Promise<string> {
    const res = await this.send('PATCH', location, {
      scopes: [pushScope(repository)], expect: [202],
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(chunk.length),
        'content-range': `${offsetBytes}-${offsetBytes + chunk.length - 1}`,
      },
      body: chunk,
    });
    await res.body.dump().catch(() => undefined);
    const next = headerOf(res.headers, 'location');
    return next ? new URL(next, this.baseUrl).href : location;
  }

  /** Completes an upload with PUT ?digest= (and the last bytes, if any). */
  async finishUpload(repository: string, location: string, digest: string, last: Buffer | null = null): Promise<void> {
    const url = new URL(location);
    url.searchParams.set('digest', digest);
    const headers: Record<string, string> = { 'content-length': String(last?.length ?? 0) };
    if (last && last.length > 0) headers['content-type'] = 'application/octet-stream';
    const res = await this.send('PUT', url.href, { scopes: [pushScope(repository)], expect: [201, 204], headers, body: last });
    await res.body.dump().catch(() => undefined);
  }

  /** PUTs a manifest under a tag or digest; returns the digest the registry gives it. */
  async putManifest(repository: string, reference: string, body: Buffer, mediaType: string): Promise<string | null> {
    const res = await this.send('PUT', `/v2/${repository}/manifests/${reference}`, {
      scopes: [pushScope(repository)], expect: [201, 204], headers: { 'content-type': mediaType }, body,
    });
    await res.body.dump().catch(() => undefined);
    return headerOf(res.headers, 'docker-content-digest');
  }

  async close(): Promise<void> {
    await Promise.all([this.dispatcher.close(), this.redirectDispatcher.close()]).catch(() => undefined);
  }
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

function scopeKey(scopes: string[]): string {
  return [...scopes].sort().join(' ');
}

/** NODE_EXTRA_CA_CERTS (Node adds it to its defaults; an explicit `ca` list must too). */
function extraCaFromEnv(): string[] {
  const file = process.env.NODE_EXTRA_CA_CERTS;
  if (!file) return [];
  try {
    return [fs.readFileSync(file, 'utf8')];
  } catch {
    return [];
  }
}
