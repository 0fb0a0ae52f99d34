#!/usr/bin/env node
// ui-bench: figures for the staff web UI of a running Hale node. A benchmark,
// not a test: it prints numbers and asserts nothing.
//
// Usage (from the repository root; needs `npm ci` in tests/browser once):
//   node tools/ui-bench.mjs --url http://127.0.0.1:8080 --user dr.demo --password PW \
//        [--requests 50] [--clinic sched-qeh-cardiology] [--date YYYY-MM-DD] [--throttle 6]
//
// Per screen (find results, record, clinic list) it measures:
//   - server time p50/p95 over --requests sequential GET/POSTs (fetch with the
//     session cookie; time to the whole body);
//   - with Chromium: bytes transferred for the first page (cold cache) and a
//     later page (CSS cached), JavaScript bytes, font requests, other hosts;
//   - with CPU throttled (Emulation.setCPUThrottlingRate, default 6x): first
//     contentful paint and largest contentful paint of the find page and the
//     record (PerformanceObserver, buffered).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const require = createRequire(join(dirname(fileURLToPath(import.meta.url)), '..', 'tests', 'browser', 'package.json'));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith('--') ? all[i + 1] : 'true']);
  return acc;
}, []));
const URL_ = (args.url || 'http://127.0.0.1:8080').replace(/\/$/, '');
const USER = args.user || 'dr.demo';
const PASSWORD = args.password || process.env.HALE_PASSWORD;
const N = Number(args.requests || 50);
const CLINIC = args.clinic || 'sched-qeh-cardiology';
const THROTTLE = Number(args.throttle || 6);
if (!PASSWORD) { console.error('usage: node tools/ui-bench.mjs --url URL --user USER --password PW [--requests N]'); process.exit(2); }

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };
const ms = (x) => `${x.toFixed(1)} ms`;

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
try {
  const ctx = await browser.newContext({ locale: 'en-GB' });
  const page = await ctx.newPage();
  await page.goto(URL_ + '/ui/sign-in');
  await page.fill('#user', USER);
  await page.fill('#password', PASSWORD);
  await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Sign in' }).click()]);
  if (!new URL(page.url()).pathname.startsWith('/ui/') || page.url().includes('sign-in')) throw new Error('sign-in failed');
  const cookies = await ctx.cookies();
  const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  await page.goto(URL_ + '/ui/clinics');
  const date = args.date || await page.inputValue('#date');

  // A patient to search for and open: the first on the clinic list.
  await page.goto(`${URL_}/ui/clinic/${CLINIC}?date=${date}`);
  const link = page.locator('tr[id^="row-"] a[href^="/ui/patient/"]').first();
  const patientPath = await link.getAttribute('href');
  await page.goto(URL_ + patientPath);
  const name = (await page.locator('#patient-name').innerText()).trim();
  const born = (await page.locator('#patient-banner dd').first().innerText()).match(/(\d\d)-(\w{3})-(\d{4})/);
  const months = { Jan: '01', Feb: '02', Mar: '03', Apr: '04', May: '05', Jun: '06', Jul: '07', Aug: '08', Sep: '09', Oct: '10', Nov: '11', Dec: '12' };
  const family = name.split(',')[0];
  const query = `${family} ${born[1]}/${months[born[2]]}/${born[3]}`;
  await page.goto(URL_ + '/ui/');
  const csrf = await page.inputValue('input[name="csrf"]');

  console.log(`Hale UI bench: ${URL_} as ${USER}; ${N} requests per screen; clinic ${CLINIC} on ${date}; patient ${patientPath}`);
  console.log('\n== server time (fetch with the session cookie, whole body)');
  const screens = [
    ['find results', () => fetch(URL_ + '/ui/find', { method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', origin: URL_, 'sec-fetch-site': 'same-origin' }, body: new URLSearchParams({ csrf, q: query }), redirect: 'manual' })],
    ['record', () => fetch(URL_ + patientPath, { headers: { cookie } })],
    ['clinic list', () => fetch(`${URL_}/ui/clinic/${CLINIC}?date=${date}`, { headers: { cookie } })],
  ];
  for (const [label, f] of screens) {
    const times = []; let bytes = 0; let status = 0; let lastBody = new ArrayBuffer(0);
    for (let i = 0; i < N; i++) {
      const t0 = performance.now();
      const r = await f();
      const b = await r.arrayBuffer();
      times.push(performance.now() - t0);
      bytes = b.byteLength; status = r.status; lastBody = b;
    }
    if (label === 'find results' && !/patients? found/.test(new TextDecoder().decode(lastBody))) console.log('  (warning: the search page did not list results)');
    console.log(`${label.padEnd(13)} p50 ${ms(pct(times, 50)).padStart(9)}  p95 ${ms(pct(times, 95)).padStart(9)}  (HTTP ${status}, ${bytes} bytes of HTML)`);
  }

  console.log('\n== transfer (Chromium, CDP Network)');
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Network.enable');
  let total = 0; let js = 0; let fonts = 0; let reqs = 0; const hosts = new Set(); const types = new Map();
  cdp.on('Network.responseReceived', (e) => { types.set(e.requestId, e.type); if (e.type === 'Font') fonts++; });
  cdp.on('Network.requestWillBeSent', (e) => { reqs++; const u = new URL(e.request.url); if (u.protocol.startsWith('http')) hosts.add(u.host); });
  cdp.on('Network.loadingFinished', (e) => { total += e.encodedDataLength; if (types.get(e.requestId) === 'Script') js += e.encodedDataLength; });
  const measure = async (label, url) => {
    total = 0; js = 0; fonts = 0; reqs = 0; hosts.clear();
    await page.goto(url); await page.waitForLoadState('networkidle');
    console.log(`${label.padEnd(34)} ${String(total).padStart(7)} bytes in ${reqs} requests; JS ${js} bytes; fonts ${fonts}; hosts ${[...hosts].join(', ')}`);
  };
  await cdp.send('Network.clearBrowserCache');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
  await measure('find (first page, cold cache)', URL_ + '/ui/');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: false });
  await page.goto(URL_ + '/ui/');
  await measure('record (later page, CSS cached)', URL_ + patientPath);
  await measure('clinic list (later page)', `${URL_}/ui/clinic/${CLINIC}?date=${date}`);

  console.log(`\n== paint with CPU throttled ${THROTTLE}x (Emulation.setCPUThrottlingRate)`);
  await cdp.send('Emulation.setCPUThrottlingRate', { rate: THROTTLE });
  const paints = async (label, url) => {
    await page.goto(url, { waitUntil: 'load' });
    const r = await page.evaluate(() => new Promise((res) => {
      const out = { fcp: null, lcp: null };
      new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.name === 'first-contentful-paint') out.fcp = e.startTime; }).observe({ type: 'paint', buffered: true });
      new PerformanceObserver((l) => { const es = l.getEntries(); if (es.length) out.lcp = es[es.length - 1].startTime; }).observe({ type: 'largest-contentful-paint', buffered: true });
      setTimeout(() => res(out), 500);
    }));
    console.log(`${label.padEnd(13)} FCP ${r.fcp == null ? '-' : ms(r.fcp)}  LCP ${r.lcp == null ? '-' : ms(r.lcp)}`);
  };
  await paints('find', URL_ + '/ui/');
  await paints('record', URL_ + patientPath);
  await cdp.send('Emulation.setCPUThrottlingRate', { rate: 1 });
} finally {
  await browser.close();
}
