/**
 * A small in-memory registry on 127.0.0.1 for unit tests: the distribution API as pull
 * and push use it (manifests, blobs with Range, chunked and monolithic uploads,
 * cross-repository mounts, tags/list), with Basic or Bearer auth (its own token endpoint,
 * opaque tokens) and faults to inject. The real registry (docker-registry) is driven by
 * test/integration/registry.test.ts.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRegistryOptions {
  auth?: 'none' | 'basic' | 'bearer';
  user?: string;
  password?: string;
  /** Ignore Range headers (answer 200 with the whole blob). */
  ignoreRange?: boolean;
}

export interface RequestRecord {
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export class FakeRegistry {
  readonly blobs = new Map<string, Buffer>();
  /** repo → set of blob digests it holds. */
  readonly repoBlobs = new Map<string, Set<string>>();
  /** `repo:reference` → manifest. */
  readonly manifests = new Map<string, { body: Buffer; type: string }>();
  readonly requests: RequestRecord[] = [];
  /** Cut the connection after this many body bytes of the next GET of a blob (then cleared). */
  cutBlob: { digest: string; afterBytes: number } | null = null;
  /** Flip one byte at this offset of every GET of a blob. */
  flipBlob: { digest: string; atByte: number } | null = null;
  private uploads = new Map<string, { repo: string; data: Buffer[] }>();
  private tokens = new Map<string, string[]>();
  private server!: http.Server;
  port = 0;

  constructor(private readonly opts: FakeRegistryOptions = {}) {}

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  /** Stores a blob in a repository; returns its digest. */
  putBlob(repo: string, data: Buffer): string {
    const d = sha(data);
    this.blobs.set(d, data);
    if (!this.repoBlobs.has(repo)) this.repoBlobs.set(repo, new Set());
    this.repoBlobs.get(repo)!.add(d);
    return d;
  }

  putManifest(repo: string, tag: string, doc: unknown, type: string): string {
    const body = Buffer.from(JSON.stringify(doc));
    const d = sha(body);
    this.manifests.set(`${repo}:${tag}`, { body, type });
    this.manifests.set(`${repo}:${d}`, { body, type });
    return d;
  }

  blobGets(digest?: string): RequestRecord[] {
    return this.requests.filter((r) => r.method === 'GET' && /\/blobs\/sha256:/.test(r.path) && (digest === undefined || r.path.endsWith(digest)));
  }

  private authorized(req: http.IncomingMessage, res: http.ServerResponse, scope: string): boolean {
    const auth = this.opts.auth ?? 'none';
    const header = req.headers.authorization ?? '';
    if (auth === 'none') return true;
    if (auth === 'basic') {
      const want = `Basic ${Buffer.from(`${this.opts.user}:${this.opts.password}`).toString('base64')}`;
      if (header === want) return true;
      res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"', 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
      return false;
    }
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    const granted = this.tokens.get(token);
    if (granted && granted.some((g) => scopeCovers(g, scope))) return true;
    res.writeHead(401, {
      'www-authenticate': `Bearer realm="http://${this.host}/token",service="fake-registry",scope="${scope}"`,
      'content-type': 'application/json',
    });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
    return false;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    this.requests.push({ method: req.method ?? '', path: url.pathname, range: req.headers.range ?? null, authorization: req.headers.authorization ?? null });
    const body = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks)));
    });
    if (url.pathname === '/token') return this.token(req, url, res);
    const m = /^\/v2\/(.+?)\/(manifests|blobs|tags)\/(.*)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const [, repo, kind, rest] = m;
    const push = req.method !== 'GET' && req.method !== 'HEAD';
    const fromRepo = url.searchParams.get('from');
    if (!this.authorized(req, res, `repository:${repo}:${push ? 'pull,push' : 'pull'}`)) return;
    if (fromRepo && !this.authorized(req, res, `repository:${fromRepo}:pull`)) return;
    if (kind === 'tags') {
      const tags = [...this.manifests.keys()].filter((k) => k.startsWith(`${repo}:`) && !k.includes('sha256:')).map((k) => k.slice(repo.length + 1));
      if (tags.length === 0) return this.error(res, 404, 'NAME_UNKNOWN', 'repository name not known to registry');
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ name: repo, tags }));
      return;
    }
    if (kind === 'manifests') {
      if (req.method === 'PUT') {
        const d = sha(body);
        const type = req.headers['content-type'] ?? '';
        this.manifests.set(`${repo}:${rest}`, { body, type });
        this.manifests.set(`${repo}:${d}`, { body, type });
        res.writeHead(201, { 'docker-content-digest': d, location: `/v2/${repo}/manifests/${d}` }).end();
        return;
      }
      const found = this.manifests.get(`${repo}:${rest}`);
      if (!found) return this.error(res, 404, 'MANIFEST_UNKNOWN', 'manifest unknown');
      res.writeHead(200, { 'content-type': found.type, 'docker-content-digest': sha(found.body), 'content-length': found.body.length });
      res.end(req.method === 'HEAD' ? undefined : found.body);
      return;
    }
    // blobs
    if (rest.startsWith('uploads/')) return this.upload(req, url, res, repo, rest.slice('uploads/'.length), body);
    const digest = rest;
    const data = this.repoBlobs.get(repo)?.has(digest) ? this.blobs.get(digest) : undefined;
    if (!data) return this.error(res, 404, 'BLOB_UNKNOWN', 'blob unknown to registry');
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range && !this.opts.ignoreRange) start = Number(range[1]);
    let out = Buffer.from(data.subarray(start));
    if (this.flipBlob?.digest === digest && this.flipBlob.atByte >= start) out[this.flipBlob.atByte - start] ^= 0xff;
    const headers: http.OutgoingHttpHeaders = { 'content-length': out.length, 'content-type': 'application/octet-stream', 'docker-content-digest': digest };
    if (start > 0) headers['content-range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
    res.writeHead(start > 0 ? 206 : 200, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const cut = this.cutBlob;
    if (cut && cut.digest === digest) {
      this.cutBlob = null;
      res.write(out.subarray(0, cut.afterBytes), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(out);
  }

  private upload(req: http.IncomingMessage, url: URL, res: http.ServerResponse, repo: string, id: string, body: Buffer): void {
    if (req.method === 'POST') {
      const mount = url.searchParams.get('mount');
      const from = url.searchParams.get('from');
      if (mount && from && this.repoBlobs.get(from)?.has(mount)) {
        this.putBlob(repo, this.blobs.get(mount)!);
        res.writeHead(201, { location: `/v2/${repo}/blobs/${mount}`, 'docker-content-digest': mount }).end();
        return;
      }
      const uuid = `u${this.uploads.size + 1}-${Date.now()}`;
      this.uploads.set(uuid, { repo, data: [] });
      const monolithic = url.searchParams.get('digest');
      if (monolithic) return this.finish(res, repo, uuid, monolithic, body);
      res.writeHead(202, { location: `/v2/${repo}/blobs/uploads/${uuid}?_state=0`, range: '0-0', 'docker-upload-uuid': uuid }).end();
      return;
    }
    const up = this.uploads.get(id);
    if (!up) return this.error(res, 404, 'BLOB_UPLOAD_UNKNOWN', 'upload unknown');
    if (req.method === 'PATCH') {
      const have = up.data.reduce((s, b) => s + b.length, 0);
      const cr = /^(\d+)-(\d+)$/.exec(String(req.headers['content-range'] ?? ''));
      if (cr && Number(cr[1]) !== have) return this.error(res, 416, 'BLOB_UPLOAD_INVALID', 'out of order');
      up.data.push(body);
      const n = have + body.length;
      res.writeHead(202, { location: `/v2/${repo}/blobs/uploads/${id}?_state=${n}`, range: `0-${n - 1}` }).end();
      return;
    }
    if (req.method === 'PUT') return this.finish(res, repo, id, url.searchParams.get('digest') ?? '', body);
    res.writeHead(405).end();
  }

  private finish(res: http.ServerResponse, repo: string, id: string, digest: string, last: Buffer): void {
    const up = this.uploads.get(id)!;
    const data = Buffer.concat([...up.data, last]);
    this.uploads.delete(id);
    if (sha(data) !== digest) return this.error(res, 400, 'DIGEST_INVALID', 'provided digest did not match uploaded content');
    this.putBlob(repo, data);
    res.writeHead(201, { location: `/v2/${repo}/blobs/${digest}`, 'docker-content-digest': digest }).end();
  }

  private token(req: http.IncomingMessage, url: URL, res: http.ServerResponse): void {
    const want = `Basic ${Buffer.from(`${this.opts.user}:${this.opts.password}`).toString('base64')}`;
    if (req.headers.authorization !== want) return this.error(res, 401, 'UNAUTHORIZED', 'bad credentials');
    const token = `t${this.tokens.size + 1}`;
    this.tokens.set(token, url.searchParams.getAll('scope'));
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, expires_in: 300 }));
  }

  private error(res: http.ServerResponse, status: number, code: string, message: string): void {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code, message }] }));
  }
}

/** Does a granted scope (`repository:NAME:a,b`) cover a wanted one? */
function scopeCovers(granted: string, wanted: string): boolean {
  const [gt, gn, ga] = granted.split(':');
  const [wt, wn, wa] = wanted.split(':');
  if (gt !== wt || gn !== wn) return false;
  const have = new Set(ga.split(','));
  return wa.split(',').every((a) => have.has(a));
}
