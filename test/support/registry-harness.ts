/**
 * A real registry for tests: Debian's docker-registry (distribution 2.8) started on
 * 127.0.0.1 on a free port with its own config and storage directory, never the host's
 * service. With it: TLS files made with openssl (a CA and a server certificate for
 * 127.0.0.1), a bcrypt htpasswd file (htpasswd -B), a token server issuing the JWTs the
 * registry's token auth verifies (RS256, signed by a certificate in its
 * rootcertbundle, sent in the x5c header), and an HTTP proxy that counts requests and
 * cuts or corrupts one blob download.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPrivateKey, randomBytes, sign } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export function haveCommand(cmd: string, args: string[] = ['--version']): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface TlsFiles {
  caCert: string;
  serverCert: string;
  serverKey: string;
}

/** A CA and a server certificate for 127.0.0.1 signed by it, in `dir`. */
export function makeTlsFiles(dir: string): TlsFiles {
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  fs.writeFileSync(f('ca.cnf'), [
    '[req]', 'distinguished_name = dn', 'prompt = no', 'x509_extensions = v3_ca',
    '[dn]', 'CN = dmfs-test-ca',
    '[v3_ca]', 'basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash', '',
  ].join('\n'));
  fs.writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  const ossl = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ossl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-config', 'ca.cnf']);
  ossl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  ossl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'server.ext']);
  return { caCert: f('ca.crt'), serverCert: f('server.crt'), serverKey: f('server.key') };
}

/** A bcrypt htpasswd file (the registry accepts only bcrypt). */
export function makeHtpasswd(file: string, user: string, password: string): string {
  fs.writeFileSync(file, execFileSync('htpasswd', ['-Bbn', user, password]));
  return file;
}

export interface RegistryConfig {
  tls?: TlsFiles;
  htpasswd?: string;
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
}

export interface RunningRegistry {
  host: string;
  port: number;
  dir: string;
  log(): string;
  stop(): Promise<void>;
}

/** Starts docker-registry with a config of its own in `dir`; resolves once /v2/ answers. */
export async function startRegistry(dir: string, cfg: RegistryConfig = {}): Promise<RunningRegistry> {
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:', '  level: info', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${path.join(dir, 'data')}`, '  delete:', '    enabled: true',
    'http:', `  addr: 127.0.0.1:${port}`,
  ];
  if (cfg.tls) lines.push('  tls:', `    certificate: ${cfg.tls.serverCert}`, `    key: ${cfg.tls.serverKey}`);
  if (cfg.htpasswd) lines.push('auth:', '  htpasswd:', '    realm: dmfs-test', `    path: ${cfg.htpasswd}`);
  if (cfg.token) {
    lines.push('auth:', '  token:', `    realm: ${cfg.token.realm}`, `    service: ${cfg.token.service}`, `    issuer: ${cfg.token.issuer}`,
      `    rootcertbundle: ${cfg.token.rootCertBundle}`);
  }
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, lines.join('\n') + '\n');
  const logFile = path.join(dir, 'registry.log');
  const out = fs.openSync(logFile, 'w');
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  let exited = false;
  child.on('exit', () => (exited = true));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) throw new Error(`docker-registry exited at start:\n${fs.readFileSync(logFile, 'utf8')}`);
    const ok = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.destroy();
        resolve(true);
      });
      sock.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not listen on ${port}:\n${fs.readFileSync(logFile, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    dir,
    log: () => fs.readFileSync(logFile, 'utf8'),
    stop: async () => {
      if (exited) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    },
  };
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

/**
 * The token server of the distribution token spec: GET ?service=&scope=... with Basic
 * credentials; grants what each scope asks for to `user`. Its JWTs name the signing
 * certificate in `x5c`, which the registry checks against its rootcertbundle.
 */
export class TokenServer {
  readonly issuer = 'dmfs-test-issuer';
  readonly service = 'dmfs-test-registry';
  requests = 0;
  port = 0;
  readonly certFile: string;
  private readonly keyPem: string;
  private readonly certDerB64: string;
  private server!: http.Server;

  constructor(dir: string, private readonly user: string, private readonly password: string) {
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'token.key', '-out', 'token.crt', '-days', '2', '-subj', '/CN=dmfs-test-token'], { cwd: dir, stdio: 'pipe' });
    this.certFile = path.join(dir, 'token.crt');
    this.keyPem = fs.readFileSync(path.join(dir, 'token.key'), 'utf8');
    this.certDerB64 = fs.readFileSync(this.certFile, 'utf8').replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  }

  get realm(): string {
    return `http://127.0.0.1:${this.port}/token`;
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      this.requests++;
      const url = new URL(req.url ?? '/', 'http://x');
      const want = `Basic ${Buffer.from(`${this.user}:${this.password}`).toString('base64')}`;
      if (url.pathname !== '/token' || req.headers.authorization !== want) {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'bad credentials' }));
        return;
      }
      const access = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean).map((s) => {
        const [type, ...rest] = s.split(':');
        const actions = rest.pop() ?? '';
        return { type, name: rest.join(':'), actions: actions.split(',') };
      });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: this.jwt(access), expires_in: 300 }));
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private jwt(access: unknown[]): string {
    const now = Math.floor(Date.now() / 1000);
    const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [this.certDerB64] }));
    const claims = b64url(JSON.stringify({
      iss: this.issuer, sub: this.user, aud: this.service, exp: now + 300, nbf: now - 10, iat: now,
      jti: randomBytes(8).toString('hex'), access,
    }));
    const signature = sign('sha256', Buffer.from(`${header}.${claims}`), createPrivateKey(this.keyPem));
    return `${header}.${claims}.${b64url(signature)}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export interface ProxyRecord {
  method: string;
  path: string;
  range: string | null;
}

/**
 * An HTTP proxy in front of a plain-HTTP registry (Host passed through, so the
 * registry's upload Locations name the proxy). Records requests; `cutBlob` closes the
 * connection after N body bytes of the next GET of that blob; `flipBlob` inverts the
 * byte at an offset of every GET of it.
 */
export class FaultProxy {
  readonly requests: ProxyRecord[] = [];
  cutBlob: { digest: string; afterBytes: number } | null = null;
  flipBlob: { digest: string; atByte: number } | null = null;
  port = 0;
  private server!: http.Server;

  constructor(private readonly upstreamPort: number) {}

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  blobGets(digest?: string): ProxyRecord[] {
    return this.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/sha256:') && (digest === undefined || r.path.endsWith(digest)));
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const p = (req.url ?? '/').split('?')[0];
      this.requests.push({ method: req.method ?? '', path: p, range: (req.headers.range as string | undefined) ?? null });
      const up = http.request({ host: '127.0.0.1', port: this.upstreamPort, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        const cut = req.method === 'GET' && this.cutBlob && p.endsWith(this.cutBlob.digest) ? this.cutBlob : null;
        if (cut) this.cutBlob = null;
        const flip = req.method === 'GET' && this.flipBlob && p.endsWith(this.flipBlob.digest) ? this.flipBlob : null;
        let offset = 0;
        const range = /^bytes (\d+)-/.exec(String(upRes.headers['content-range'] ?? ''));
        if (range) offset = Number(range[1]);
        upRes.on('data', (chunk: Buffer) => {
          let out = chunk;
          if (flip && flip.atByte >= offset && flip.atByte < offset + chunk.length) {
            out = Buffer.from(chunk);
            out[flip.atByte - offset] ^= 0xff;
          }
          if (cut && offset + out.length > cut.afterBytes) {
            const keep = Math.max(0, cut.afterBytes - offset);
            res.write(out.subarray(0, keep), () => setTimeout(() => res.socket?.destroy(), 20));
            upRes.destroy();
            offset += out.length;
            return;
          }
          offset += out.length;
          res.write(out);
        });
        upRes.on('end', () => res.end());
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export const sha256Of = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
