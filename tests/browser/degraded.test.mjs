// Degraded mode in the browser: a hospital-site learner of a local cluster
// (`hale up --fault-injection`) is cut off from the data centres; the UI on it
// says so, keeps saving notes locally, and syncs them when it is reconnected.
//
// Slower than ui.test.mjs (four nodes, a demo board loaded through raft):
// about a minute on 2 cores with a debug build. HALE_SKIP_DEGRADED=1 skips it.
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import https from 'node:https';
import { mkdtempSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HALE_BIN, launchBrowser, signIn, axe, screenshot, clickNav, parsePasswords, sleep } from './lib.mjs';

const skip = process.env.HALE_SKIP_DEGRADED === '1' ? 'HALE_SKIP_DEGRADED=1' : false;
let up; let data; let browser; let out = ''; let learner; let node1;

/** Poll `f` until it returns a truthy value. */
async function until(what, f, ms = 120_000, every = 500) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await f(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s (last: ${last})`);
    await sleep(every);
  }
}

/** POST /raft/fault on a node's raft port: mutual TLS, with the operator
 * certificate `hale up` made in DATA/certs (its node certificates name 127.0.0.1). */
async function fault(raftAddr, isolated) {
  const [host, port] = raftAddr.split(':');
  const certs = join(data, 'certs');
  const body = JSON.stringify({ isolated });
  const { status, text } = await new Promise((resolve, reject) => {
    const req = https.request({
      host, port, method: 'POST', path: '/raft/fault',
      ca: readFileSync(join(certs, 'ca.pem')),
      cert: readFileSync(join(certs, 'operator.pem')),
      key: readFileSync(join(certs, 'operator-key.pem')),
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      let t = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { t += d; });
      res.on('end', () => resolve({ status: res.statusCode, text: t }));
    });
    req.on('error', reject);
    req.end(body);
  });
  assert.equal(status, 200, `fault injection on ${raftAddr}: ${status} ${text}`);
}

before(async () => {
  if (skip) return;
  data = mkdtempSync(join(tmpdir(), 'hale-ui-degraded-'));
  up = spawn(HALE_BIN, ['up', '--nodes', '3', '--learners', '1', '--demo-patients', '200', '--fault-injection', '--data', data],
    { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout.setEncoding('utf8');
  up.stderr.setEncoding('utf8');
  up.stdout.on('data', (d) => { out += d; });
  up.stderr.on('data', (d) => { out += d; });
  // "  node 4  learner  QEH          http://127.0.0.1:P   (raft 127.0.0.1:R, log ...)"
  const nodes = await until('hale up prints the cluster', () => {
    const rows = [...out.matchAll(/node (\d+)\s+(voter|learner)\s+(\S+)\s+(http:\/\/\S+)\s+\(raft (\S+),/g)];
    return rows.length === 4 ? rows.map((m) => ({ id: Number(m[1]), role: m[2], site: m[3], api: m[4], raft: m[5] })) : null;
  }, 240_000);
  learner = nodes.find((n) => n.role === 'learner');
  node1 = nodes.find((n) => n.id === 1);
  await until('node 1 has loaded the demo board', async () => (await fetch(node1.api + '/readyz')).status === 200, 240_000);
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (up) { try { process.kill(-up.pid, 'SIGKILL'); } catch { /* gone */ } }
  // The nodes are hale up's children in its process group; make sure of each.
  if (data) {
    await sleep(200);
    rmSync(data, { recursive: true, force: true });
  }
});

test('degraded: a cut-off site shows the banner, saves a note locally, and syncs it when reconnected', { skip, timeout: 600_000 }, async () => {
  const log = existsSync(join(data, 'node-1.log')) ? readFileSync(join(data, 'node-1.log'), 'utf8') : '';
  const pw = parsePasswords(log);
  const ctx = await browser.newContext({ locale: 'en-GB' });
  const page = await ctx.newPage();
  // The demo accounts reach the learner through the log.
  await until('sign-in works on the learner', async () => {
    try { await signIn(page, learner.api, 'dr.demo', pw['dr.demo']); return true; } catch { return false; }
  }, 120_000, 1000);
  const patient = 'pat-000005';
  const record = `${learner.api}/ui/patient/${patient}`;
  await until('the learner has the patient', async () => { await page.goto(record); return (await page.locator('#patient-banner').count()) > 0; });
  assert.equal(await page.locator('#degraded-banner').count(), 0, 'no banner while connected');

  await fault(learner.raft, true);
  const banner = await until('the degraded banner shows', async () => {
    await page.goto(record);
    return (await page.locator('#degraded-text').count()) ? page.locator('#degraded-text').innerText() : null;
  }, 60_000, 1000);
  assert.match(banner, /Data as of \d\d:\d\d\. 0 changes/);
  await axe(page, 'record, degraded');
  await screenshot(page, 'degraded');

  const note = `Written while cut off ${Date.now()}`;
  await clickNav(page, page.getByRole('link', { name: 'Write a note' }));
  await page.fill('#note', note);
  await clickNav(page, page.getByRole('button', { name: 'Save note' }));
  assert.match(await page.locator('main').innerText(), /waiting to sync/);
  assert.ok((await page.locator('#section-notes').innerText()).includes(note));
  await page.reload();
  assert.match(await page.locator('#degraded-text').innerText(), /1 change saved here/);
  await axe(page, 'record, degraded, one change waiting');

  await fault(learner.raft, false);
  await until('the banner goes and the note is synced', async () => {
    await page.goto(record);
    if (await page.locator('#degraded-banner').count()) return false;
    const notes = await page.locator('#section-notes').innerText();
    return notes.includes(note) && !/waiting to sync/i.test(notes.split('\n').find((l) => l.includes(note)) || '');
  }, 120_000, 1000);
  await ctx.close();
});
