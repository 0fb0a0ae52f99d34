// Shared helpers for the Hale browser tests: start a server, drive
// Chromium (system package, through playwright-core), run axe.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { AxeBuilder } from '@axe-core/playwright';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '..', '..');
export const HALE_BIN = process.env.HALE_BIN || join(ROOT, 'target', 'debug', 'hale');
export const SCREENS = join(ROOT, 'target', 'ui-screens');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
export const ADMIN_TOKEN = 'demo-admin';
export const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'];

// Fallbacks only: the real passwords are read from the server's log.
const FALLBACK_PASSWORDS = { 'dr.demo': 'demo-clinician-pw', 'clerk.demo': 'demo-clerk-pw1', 'admin.demo': 'demo-admin-pw12' };

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
  });
}

/** Demo users' passwords from log lines `demo user (web UI sign-in) user=X password=Y`. */
export function parsePasswords(log) {
  const out = { ...FALLBACK_PASSWORDS };
  for (const m of log.matchAll(/demo user \(web UI sign-in\) user=(\S+) password=(\S+)/g)) out[m[1]] = m[2];
  return out;
}

export async function waitReady(url, ms = 180_000, path = '/readyz') {
  const until = Date.now() + ms;
  for (;;) {
    try { const r = await fetch(url + path); if (r.status === 200) return; } catch { /* not yet */ }
    if (Date.now() > until) throw new Error(`${url}${path} not 200 within ${ms / 1000} s`);
    await sleep(250);
  }
}

/** One `hale serve --demo` in its own process group; `stop()` kills the group. */
export async function startServer({ patients = 400 } = {}) {
  const data = mkdtempSync(join(tmpdir(), 'hale-ui-browser-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(HALE_BIN, ['serve', '--demo', '--demo-patients', String(patients), '--data', data, '--listen', `127.0.0.1:${port}`],
    { detached: true, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HALE_LOG: process.env.HALE_LOG || 'info' } });
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { log += d; });
  let exited = null;
  child.on('exit', (code, sig) => { exited = `exit ${code} ${sig}`; });
  const stop = () => {
    try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
    try { rmSync(data, { recursive: true, force: true }); } catch { /* best effort */ }
  };
  try {
    const until = Date.now() + 240_000;
    for (;;) {
      if (exited) throw new Error(`hale serve ${exited}:\n${log.slice(-3000)}`);
      try { const r = await fetch(url + '/readyz'); if (r.status === 200) break; } catch { /* not yet */ }
      if (Date.now() > until) throw new Error(`hale serve not ready in 240 s:\n${log.slice(-3000)}`);
      await sleep(250);
    }
  } catch (e) { stop(); throw e; }
  return { url, data, child, stop, passwords: () => parsePasswords(log), log: () => log };
}

export async function fhir(url, method, path, body) {
  const r = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, accept: 'application/fhir+json', ...(body ? { 'content-type': 'application/fhir+json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, json, text };
}

/** NHS number check digit (mod 11, weights 10..2); null when the number is invalid (remainder 1). */
export function nhsCheckDigit(nine) {
  let sum = 0;
  for (let i = 0; i < 9; i++) sum += Number(nine[i]) * (10 - i);
  const c = 11 - (sum % 11);
  if (c === 10) return null;
  return c === 11 ? 0 : c;
}

/** A valid NHS number in the 999 (test) range. */
export function testNhsNumber() {
  for (;;) {
    const nine = '999' + String(Math.floor(Math.random() * 1e6)).padStart(6, '0');
    const c = nhsCheckDigit(nine);
    if (c !== null) return nine + c;
  }
}

export const nhs334 = (n) => `${n.slice(0, 3)} ${n.slice(3, 6)} ${n.slice(6)}`;

/** axe on the page as it is now; fails with a readable list of violations. */
export async function axe(page, label) {
  const r = await new AxeBuilder({ page }).withTags(AXE_TAGS).analyze();
  const v = r.violations.map((x) => `${x.id} (${x.impact}): ${x.help}\n    ${x.nodes.slice(0, 4).map((n) => n.target.join(' ') + ' :: ' + n.failureSummary.replace(/\n/g, ' ')).join('\n    ')}`);
  assert.equal(v.length, 0, `axe on ${label} (${page.url()}):\n  ${v.join('\n  ')}`);
  return r;
}

export async function screenshot(page, name) {
  mkdirSync(SCREENS, { recursive: true });
  await page.screenshot({ path: join(SCREENS, `${name}.png`), fullPage: true });
}

/** How long a navigation may take: generous, since CI machines are shared and
 * slow; HALE_TEST_TIMEOUT_SCALE stretches it further. */
const NAV_TIMEOUT_MS = 120_000 * Number(process.env.HALE_TEST_TIMEOUT_SCALE || 1);

/** Click something that navigates, and wait for the new page. */
export async function clickNav(page, locator) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout: NAV_TIMEOUT_MS }), (typeof locator === 'string' ? page.locator(locator) : locator).click()]);
}

export async function pressNav(page, key = 'Enter') {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout: NAV_TIMEOUT_MS }), page.keyboard.press(key)]);
}

/** What has keyboard focus. */
export function focused(page) {
  return page.evaluate(() => {
    const e = document.activeElement;
    if (!e || e === document.body) return { tag: 'body', id: '', text: '', href: '', row: '', cls: '' };
    return {
      tag: e.tagName.toLowerCase(), id: e.id || '', text: (e.innerText || e.value || '').replace(/\s+/g, ' ').trim(),
      href: e.getAttribute('href') || '', row: e.closest('tr') ? e.closest('tr').id : '', cls: e.className || '',
      type: e.getAttribute('type') || '',
    };
  });
}

/** Press Tab (or Shift+Tab) until `pred(focused)` holds. */
export async function tabTo(page, pred, what, { max = 200, back = false } = {}) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press(back ? 'Shift+Tab' : 'Tab');
    const f = await focused(page);
    if (pred(f)) return { ...f, presses: i + 1 };
  }
  throw new Error(`keyboard: ${max} Tab presses never reached ${what}`);
}

/** Sign in by mouse, keyboard or (JS off) mouse. Returns the number of clicks used. */
export async function signIn(page, url, user, password, mode = 'mouse') {
  await page.goto(url + '/ui/sign-in');
  if (mode === 'keyboard') {
    let f = await focused(page);
    if (f.id !== 'user') f = await tabTo(page, (x) => x.id === 'user', '#user');
    await page.keyboard.type(user);
    await tabTo(page, (x) => x.id === 'password', '#password');
    await page.keyboard.type(password);
    await pressNav(page, 'Enter');
  } else {
    await page.fill('#user', user);
    await page.fill('#password', password);
    await clickNav(page, page.getByRole('button', { name: 'Sign in' }));
  }
  assert.match(new URL(page.url()).pathname, /^\/ui\/$/, `sign-in as ${user} should land on /ui/, got ${page.url()}: ${await page.locator('main').innerText()}`);
}

export function pdfPages(pdf) {
  const dir = mkdtempSync(join(tmpdir(), 'hale-pdf-'));
  try {
    const f = join(dir, 'p.pdf');
    writeFileSync(f, pdf);
    const text = execFileSync('pdftotext', ['-layout', f, '-'], { encoding: 'utf8' });
    return text.split('\f').filter((p) => p.trim().length > 0).map((p) => p.replace(/\s+/g, ' '));
  } finally { rmSync(dir, { recursive: true, force: true }); }
}

export { readFileSync };
