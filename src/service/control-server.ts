/**
 * The control API's server side (see control-protocol.ts for the routes): one node:http
 * server on the daemon's unix socket, each route a short call into the PoolHost. Errors
 * become `{ error: { code, message } }`; a thrown value that is no DmfsError is answered
 * as IO_ERROR with its message (and logged with its stack: it is a bug).
 */
import * as http from 'node:http';
import { DmfsError, dmfsError, isDmfsError, type ErrorCode } from '../errors';
import { CONTROL_API_VERSION, type DaemonStatus } from './control-protocol';
import type { PoolHost } from './pool-host';

/** A request body larger than this is refused (every request is a small JSON object). */
const MAX_BODY_BYTES = 1 << 20;

export interface ControlHandlers {
  host: PoolHost;
  status(): DaemonStatus;
  /** Asked to stop: answers first, then stops. */
  requestStop(): void;
  log: (line: string) => void;
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  USAGE: 400, INVALID: 400, BAD_OPTION: 400, PATH_IN_POOL: 400, NAME_TOO_LONG: 400, WRONG_LAYER_KIND: 400,
  NOT_FOUND: 404, LAYER_NOT_FOUND: 404, NOT_MOUNTED: 404,
  LAYER_IN_USE: 409, LAYER_EXISTS: 409, EXISTS: 409, LAYER_HAS_CHILDREN: 409, POOL_LOCKED: 409,
};

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(dmfsError('USAGE', `request body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      if (!size) return resolve({});
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(dmfsError('USAGE', 'the request body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

type Route = (body: any, match: RegExpExecArray) => Promise<unknown> | unknown;

export function createControlServer(h: ControlHandlers): http.Server {
  const version = require('../../package.json').version as string;
  const routes: [string, RegExp, Route][] = [
    ['GET', /^\/version$/, () => ({ api: CONTROL_API_VERSION, dmfs: version })],
    ['GET', /^\/v1\/status$/, () => h.status()],
    ['GET', /^\/v1\/layers$/, () => h.host.listLayers()],
    ['POST', /^\/v1\/layers$/, (b) => h.host.createLayer(b)],
    ['POST', /^\/v1\/mounts$/, (b) => h.host.mount(b)],
    ['POST', /^\/v1\/unmount$/, (b) => h.host.unmount(b)],
    ['GET', /^\/v1\/services$/, () => h.host.services.list()],
    ['POST', /^\/v1\/services\/([a-z0-9-]+)\/start$/, (_b, m) => h.host.services.start(m[1])],
    ['POST', /^\/v1\/services\/([a-z0-9-]+)\/stop$/, (_b, m) => h.host.services.stop(m[1])],
    ['POST', /^\/v1\/stop$/, () => {
      setImmediate(() => h.requestStop());
      return { stopping: true };
    }],
  ];
  const server = http.createServer((req, res) => {
    const send = (status: number, value: unknown) => {
      const body = JSON.stringify(value);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    void (async () => {
      const url = (req.url ?? '/').split('?')[0];
      const hit = routes.find(([method, re]) => method === req.method && re.test(url));
      if (!hit) {
        const known = routes.some(([, re]) => re.test(url));
        throw dmfsError(known ? 'USAGE' : 'NOT_FOUND', known ? `${req.method} is not allowed on ${url}` : `no such control API route: ${req.method} ${url} (this daemon speaks API ${CONTROL_API_VERSION})`);
      }
      const body = req.method === 'POST' ? await readBody(req) : {};
      send(200, (await hit[2](body, hit[1].exec(url)!)) ?? {});
    })().catch((err: unknown) => {
      const known: DmfsError = isDmfsError(err) ? err : dmfsError('IO_ERROR', (err as Error)?.message ?? String(err), err);
      if (!isDmfsError(err)) h.log(`control request ${req.method} ${req.url} failed: ${(err as Error)?.stack ?? String(err)}`);
      if (!res.headersSent) send(HTTP_STATUS[known.code] ?? 500, { error: { code: known.code, message: known.message } });
    });
  });
  // Clients keep connections open between calls (Pool.connect); idle ones close after a while.
  server.keepAliveTimeout = 60_000;
  return server;
}
