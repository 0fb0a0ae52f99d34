// The staff web UI in a real browser (system Chromium through playwright-core):
// key tasks by mouse, keyboard only and with JavaScript off; escaping; axe on
// every screen and state; print to PDF; reflow at 320 px; page weight.
// Run: (cd tests/browser && npm ci && node --test --test-concurrency=1)
// HALE_BIN points at the hale binary (default target/debug/hale).
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, fhir, testNhsNumber, nhs334, axe, screenshot, clickNav, pressNav,
  focused, tabTo, signIn, pdfPages,
} from './lib.mjs';

let srv; let browser; let pw; let today; let first; // first demo patient
// The demo's clinics run on set weekdays and none at weekends: the days these
// tests use are the next ones with patients booked, found from the data.
let cardiologyDay; const outageDay = {};
const MODES = ['mouse', 'keyboard', 'nojs'];

before(async () => {
  srv = await startServer({ patients: 400 });
  pw = srv.passwords();
  browser = await launchBrowser();
  const r = await fhir(srv.url, 'GET', '/Patient?_count=1');
  first = r.json.entry[0].resource;
  // "Today" as the UI sees it (UK date): the clinic index's default day.
  const { page, ctx } = await session('dr.demo');
  await page.goto(srv.url + '/ui/clinics');
  today = await page.inputValue('#date');
  await ctx.close();
  const slots = await fhir(srv.url, 'GET',
    `/Slot?schedule=sched-qeh-cardiology&status=busy&start=ge${today}&start=lt${plusDays(today, 14)}&_count=1000`);
  cardiologyDay = (slots.json.entry || []).map((e) => e.resource.start.slice(0, 10)).sort()[0];
  assert.ok(cardiologyDay, `QEH cardiology has no booked slot in the 14 days from ${today}`);
  const appts = await fhir(srv.url, 'GET',
    `/Appointment?status=booked&date=ge${plusDays(cardiologyDay, 1)}&date=lt${plusDays(today, 21)}&_sort=date&_count=1000`);
  for (const [mode, site] of Object.entries(OUTAGE_SITES)) {
    outageDay[mode] = (appts.json.entry || [])
      .filter((e) => (e.resource.participant || []).some((p) => (p.actor?.reference || '').startsWith(`Location/loc-${site.toLowerCase()}-`)))
      .map((e) => e.resource.start.slice(0, 10)).sort()[0];
    // After the cardiology day, which the outage would otherwise empty for the later tests.
    assert.ok(outageDay[mode], `${site} has no booked appointment from ${plusDays(cardiologyDay, 1)} to ${plusDays(today, 21)}`);
  }
});

function plusDays(day, n) {
  const d = new Date(day + 'T12:00:00Z');
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

after(async () => {
  if (browser) await browser.close();
  if (srv) srv.stop();
});

function newContext(mode, extra = {}) {
  return browser.newContext({ javaScriptEnabled: mode !== 'nojs', locale: 'en-GB', timezoneId: 'Europe/London', ...extra });
}

/** A signed-in page (mouse sign-in, or keyboard for the keyboard mode). */
async function session(user, mode = 'mouse', extra = {}) {
  const ctx = await newContext(mode, extra);
  const page = await ctx.newPage();
  await signIn(page, srv.url, user, pw[user], mode);
  return { ctx, page };
}

const nhsOf = (p) => p.identifier.find((i) => i.system === 'https://fhir.nhs.uk/Id/nhs-number').value;
const text = (page, sel) => page.locator(sel).innerText();

/** Follow a link or press a button: by mouse (counted) or by keyboard. */
async function act(page, mode, role, name, counter, { within } = {}) {
  if (mode === 'keyboard') {
    const tag = role === 'link' ? 'a' : 'button';
    const want = typeof name === 'string' ? (t) => t.startsWith(name) : (t) => name.test(t);
    await tabTo(page, (f) => f.tag === tag && want(f.text) && (!within || f.row === within), `${role} "${name}"`);
    // Buttons by Space, links by Enter: both must work from the keyboard.
    await pressNav(page, tag === 'button' ? 'Space' : 'Enter');
  } else {
    const scope = within ? page.locator(`#${within}`) : page;
    await clickNav(page, scope.getByRole(role, { name }).first());
    if (counter) counter.clicks++;
  }
}

// ---------------------------------------------------------------- (a) sign in, find by NHS number

for (const [i, mode] of MODES.entries()) {
  test(`(a) ${mode}: sign in, find a patient by NHS number (type + Enter), see the banner`, async () => {
    const ctx = await newContext(mode);
    const page = await ctx.newPage();
    await signIn(page, srv.url, 'dr.demo', pw['dr.demo'], mode);
    const r = await fhir(srv.url, 'GET', `/Patient?_count=1&_offset=${30 + i}`);
    const p = r.json.entry[0].resource;
    const nhs = nhsOf(p);
    // The box is focused on arrival (autofocus); typing + Enter is 0 clicks.
    let f = await focused(page);
    if (f.id !== 'q') {
      if (mode === 'keyboard') f = await tabTo(page, (x) => x.id === 'q', '#q');
      else await page.focus('#q');
    }
    await page.keyboard.type(mode === 'keyboard' ? nhs334(nhs) : nhs);
    await pressNav(page, 'Enter');
    assert.equal(new URL(page.url()).pathname, `/ui/patient/${p.id}`);
    await page.locator('#patient-banner').waitFor();
    assert.equal((await text(page, '#nhs-number')).trim(), nhs334(nhs));
    assert.match(await text(page, '#nhs-number'), /^\d{3} \d{3} \d{4}$/);
    if (mode === 'keyboard') {
      // A page without autofocus: the first Tab reaches the skip link, Enter moves focus to main.
      await page.reload();
      const s = await tabTo(page, () => true, 'anything', { max: 1 });
      assert.equal(s.text, 'Skip to main content');
      await page.keyboard.press('Enter');
      f = await focused(page);
      assert.equal(f.id, 'maincontent');
    }
    await ctx.close();
  });
}

// ---------------------------------------------------------------- (b) check in on today's clinic list, undo

for (const [i, mode] of MODES.entries()) {
  test(`(b) ${mode}: check a patient in on a clinic list (1 click) and undo`, async () => {
    const { ctx, page } = await session('clerk.demo', mode);
    await page.goto(`${srv.url}/ui/clinic/sched-qeh-cardiology?date=${cardiologyDay}`);
    const rows = await page.$$eval('tr[id^="row-"]', (rs) => rs
      .filter((r) => [...r.querySelectorAll('button')].some((b) => b.textContent.trim().startsWith('Check in')))
      .map((r) => r.id));
    assert.ok(rows.length > i, `need ${i + 1} rows with "Check in" on ${cardiologyDay}, found ${rows.length}`);
    const row = rows[i];
    const appt = row.slice('row-'.length);
    const before = (await text(page, `#status-${appt}`)).trim();
    const counter = { clicks: 0 };
    await act(page, mode, 'button', /^Check in/, counter, { within: row });
    assert.equal(counter.clicks, mode === 'keyboard' ? 0 : 1);
    await page.locator('#flash').waitFor();
    const after = (await text(page, `#status-${appt}`)).trim();
    assert.notEqual(after, before, 'status should change');
    assert.match(after, /check/i);
    await act(page, mode, 'button', 'Undo', counter);
    assert.equal((await text(page, `#status-${appt}`)).trim(), before, 'undo restores the status');
    await ctx.close();
  });
}

// ---------------------------------------------------------------- (c) book a free slot

async function bookFromRecord(page, mode, patient, clinicIndex, counter) {
  await page.goto(`${srv.url}/ui/patient/${patient}`);
  await act(page, mode, 'link', 'Book an appointment', counter);
  const options = await page.$$eval('#clinic option', (os) => os.map((o) => ({ v: o.value, t: o.textContent.trim() })));
  const bmh = options.filter((o) => o.t.endsWith('BMH'));
  const target = bmh[clinicIndex % bmh.length];
  if (mode === 'keyboard') {
    await tabTo(page, (f) => f.id === 'clinic', '#clinic');
    const selected = await page.inputValue('#clinic');
    const now = options.findIndex((o) => o.v === selected);
    const want = options.findIndex((o) => o.v === target.v);
    for (let k = now; k < want; k++) await page.keyboard.press('ArrowDown');
    for (let k = now; k > want; k--) await page.keyboard.press('ArrowUp');
    assert.equal(await page.inputValue('#clinic'), target.v, 'keyboard selects the clinic');
  } else {
    await page.selectOption('#clinic', target.v);
    counter.clicks++;
  }
  await act(page, mode, 'button', 'Find free slots', counter);
  await act(page, mode, 'link', /^Choose/, counter);
  assert.match(page.url(), /\/ui\/book\/check\?/);
  const when = (await page.locator('dd.nhsuk-summary-list__value').nth(2).innerText()).match(/\d\d-\w{3}-\d{4} \d\d:\d\d/)[0];
  return { when, clinic: target.t.split(' – ')[0] };
}

for (const [i, mode] of MODES.entries()) {
  test(`(c) ${mode}: book a free slot via check answers, see it in the record's upcoming list`, async () => {
    const { ctx, page } = await session('clerk.demo', mode);
    const patient = `pat-0000${10 + i}`;
    const counter = { clicks: 0 };
    const { when, clinic } = await bookFromRecord(page, mode, patient, i, counter);
    await act(page, mode, 'button', 'Confirm booking', counter);
    assert.equal(new URL(page.url()).pathname, `/ui/patient/${patient}`);
    const upcoming = await text(page, '#section-upcoming');
    assert.ok(upcoming.includes(when) && upcoming.includes(clinic), `upcoming should list ${when} ${clinic}:\n${upcoming}`);
    await ctx.close();
  });
}

// ---------------------------------------------------------------- (d) write a note

for (const [i, mode] of MODES.entries()) {
  test(`(d) ${mode}: write a note and see it in the record's notes`, async () => {
    const { ctx, page } = await session('dr.demo', mode);
    const patient = `pat-0000${20 + i}`;
    const note = `Browser test note by ${mode} ${Date.now()}: reviewed, plan unchanged.`;
    await page.goto(`${srv.url}/ui/patient/${patient}`);
    const counter = { clicks: 0 };
    await act(page, mode, 'link', 'Write a note', counter);
    if (mode === 'keyboard') await tabTo(page, (f) => f.id === 'note', '#note');
    else await page.click('#note');
    await page.keyboard.type(note);
    await act(page, mode, 'button', 'Save note', counter);
    assert.equal(new URL(page.url()).pathname, `/ui/patient/${patient}`);
    assert.ok((await text(page, '#section-notes')).includes(note), 'the note is in the record');
    await ctx.close();
  });
}

// ---------------------------------------------------------------- (e) outage console end to end

const OUTAGE_SITES = { mouse: 'QEH', keyboard: 'SRI', nojs: 'KGH' };

for (const mode of MODES) {
  test(`(e) ${mode}: outage console: declare for its next clinic day at ${OUTAGE_SITES[mode]}, postpone, rebook one by hand, plan, commit`, async () => {
    const { ctx, page } = await session('admin.demo', mode);
    await page.goto(srv.url + '/ui/outage');
    const counter = { clicks: 0 };
    const desc = `Browser drill ${mode} ${Date.now()}`;
    if (mode === 'keyboard') {
      await tabTo(page, (f) => f.tag === 'summary', 'the "Declare a new incident" summary');
      await page.keyboard.press('Enter');
      const [y, m, d] = outageDay[mode].split('-');
      // The date field's segment order follows the browser's locale: probe it
      // by typing 01 02 2000, then go back into the field and type the day.
      await tabTo(page, (f) => f.id === 'start', '#start');
      await page.keyboard.type('01022000');
      const dayFirst = (await page.inputValue('#start')) === '2000-02-01';
      await page.keyboard.press('Shift+Tab'); await page.keyboard.press('Shift+Tab'); await page.keyboard.press('Shift+Tab');
      for (const id of ['start', 'end']) {
        await tabTo(page, (f) => f.id === id, `#${id}`);
        await page.keyboard.type(dayFirst ? `${d}${m}${y}` : `${m}${d}${y}`);
        assert.equal(await page.inputValue(`#${id}`), outageDay[mode], `keyboard typed the date into #${id}`);
      }
      await tabTo(page, (f) => f.id === 'sites', '#sites');
      await page.keyboard.type(OUTAGE_SITES[mode]);
      await tabTo(page, (f) => f.id === 'description', '#description');
      await page.keyboard.type(desc);
    } else {
      await page.click('summary');
      await page.fill('#start', outageDay[mode]);
      await page.fill('#end', outageDay[mode]);
      await page.fill('#sites', OUTAGE_SITES[mode]);
      await page.fill('#description', desc);
    }
    await act(page, mode, 'button', 'Declare the incident', counter);
    assert.match(page.url(), /incident=/);
    const incidentUrl = page.url();
    assert.ok((await text(page, 'main')).includes(desc));
    if (mode !== 'keyboard') await page.check('#runs-no');
    await act(page, mode, 'button', 'Postpone the appointments in scope', counter);
    const msg = await text(page, 'main');
    const n = Number((msg.match(/Postponed (\d+) appointments?\./) || [])[1]);
    assert.ok(n > 0, `some appointments postponed:\n${msg.slice(0, 800)}`);
    assert.match(msg, new RegExp(`total\\s+postponed ${n} · rebooked 0`));
    // A clerk rebooks one postponed patient by hand first (an urgent one, say):
    // Rebook, Choose, Confirm (3 clicks). Done before the plan, because the plan
    // may place every postponed appointment and leave nothing to rebook by hand
    // (it did for KGH on 2026-12-04).
    const fromList = { clicks: 0 };
    await act(page, mode, 'link', /^Rebook/, fromList);
    assert.match(page.url(), /\/ui\/book\?.*rebook=/);
    await act(page, mode, 'link', /^Choose/, fromList);
    assert.match(await text(page, 'main'), /Replaces/);
    await act(page, mode, 'button', 'Confirm booking', fromList);
    assert.match(new URL(page.url()).pathname, /^\/ui\/patient\//);
    assert.ok(fromList.clicks <= 3, `rebook took ${fromList.clicks} clicks`);
    // Back on the console, the plan places the rest.
    await page.goto(incidentUrl);
    assert.match(await text(page, 'main'), /\bRebooked\b/, 'the list marks the hand-rebooked appointment');
    await act(page, mode, 'button', 'Show the plan', counter);
    assert.match(await text(page, 'main'), /This is the plan: nothing has changed yet\./);
    await act(page, mode, 'button', 'Commit the plan', counter);
    const committed = await text(page, 'main');
    assert.match(committed, /The rebooking plan was committed\./);
    assert.match(committed, /rebooked [1-9]\d*/);
    if (mode === 'mouse') {
      await axe(page, 'outage console with an incident');
      await screenshot(page, 'outage-console');
    }
    await ctx.close();
  });
}

// ---------------------------------------------------------------- escaping

test('escaping: a family name of <script>alert(1)</script> shows literally and runs nothing', async () => {
  let created;
  for (let tries = 0; tries < 5 && !created; tries++) {
    const r = await fhir(srv.url, 'POST', '/Patient', {
      resourceType: 'Patient',
      identifier: [{ system: 'https://fhir.nhs.uk/Id/nhs-number', value: testNhsNumber() }],
      name: [{ use: 'official', family: '<script>alert(1)</script>', given: ['Eve'] }],
      gender: 'female', birthDate: '1980-01-02',
    });
    if (r.status === 201 || r.status === 200) created = r.json;
  }
  assert.ok(created, 'the patient was created');
  const { ctx, page } = await session('dr.demo');
  let dialogs = 0;
  page.on('dialog', async (d) => { dialogs++; await d.dismiss(); });
  await page.goto(`${srv.url}/ui/patient/${created.id}`);
  const name = await text(page, '#patient-name');
  assert.ok(name.toLowerCase().includes('<script>alert(1)</script>'), `literal text, got ${name}`);
  assert.equal(await page.locator('script').count(), 0, 'no script element in the page');
  await page.waitForTimeout(300);
  assert.equal(dialogs, 0, 'no dialog fired');
  await ctx.close();
});

// ---------------------------------------------------------------- axe on every screen and state

test('axe: 0 violations (WCAG 2.2 AA tags) on every screen and state, screenshots', async () => {
  const ctx = await newContext('mouse');
  const page = await ctx.newPage();
  await page.goto(srv.url + '/ui/sign-in');
  await axe(page, 'sign-in');
  await screenshot(page, 'sign-in');
  await page.fill('#user', 'dr.demo');
  await page.fill('#password', 'wrong-password');
  await clickNav(page, page.getByRole('button', { name: 'Sign in' }));
  await page.locator('.nhsuk-error-summary').waitFor();
  await axe(page, 'sign-in with error');
  await signIn(page, srv.url, 'dr.demo', pw['dr.demo']);
  await axe(page, 'find (empty)');
  await page.fill('#q', '12');
  await pressNav(page);
  await page.locator('.nhsuk-error-summary').waitFor();
  await axe(page, 'find with validation error');
  const born = first.birthDate.split('-').reverse().join('/');
  await page.fill('#q', `${first.name[0].family} ${born}`);
  await pressNav(page);
  await page.locator('#results').waitFor();
  assert.match(await text(page, '#results'), /[1-9]\d* patients? found/);
  await axe(page, 'find results');
  await screenshot(page, 'find-results');
  await page.goto(`${srv.url}/ui/patient/${first.id}`);
  await axe(page, 'record');
  await screenshot(page, 'record');
  await page.emulateMedia({ media: 'print' });
  await axe(page, 'record (print media)');
  await page.emulateMedia({ media: 'screen' });
  await page.goto(`${srv.url}/ui/patient/${first.id}/print`);
  await axe(page, 'record print view');
  await page.goto(`${srv.url}/ui/patient/${first.id}/note`);
  await axe(page, 'note form');
  await clickNav(page, page.getByRole('button', { name: 'Save note' }));
  await page.locator('.nhsuk-error-summary').waitFor();
  await axe(page, 'note with error');
  await page.goto(`${srv.url}/ui/patient/${first.id}/observation`);
  await page.locator('form input[type="text"]').first().fill('not a number');
  await clickNav(page, page.getByRole('button', { name: 'Save observations' }));
  await page.locator('.nhsuk-error-summary').waitFor();
  await axe(page, 'observation with error');
  await page.goto(srv.url + '/ui/clinics');
  await axe(page, 'clinics');
  const clinicUrl = `${srv.url}/ui/clinic/sched-qeh-cardiology?date=${cardiologyDay}`;
  await page.goto(clinicUrl);
  await axe(page, 'clinic list');
  await screenshot(page, 'clinic-list');
  await page.emulateMedia({ media: 'print' });
  await axe(page, 'clinic list (print media)');
  await page.emulateMedia({ media: 'screen' });
  const arrived = page.getByRole('button', { name: /^Arrived/ });
  if (await arrived.count()) {
    await clickNav(page, arrived.last());
    await page.locator('#flash').waitFor();
    await axe(page, 'clinic list after a click (flash)');
    await clickNav(page, page.getByRole('button', { name: 'Undo' }));
  } else {
    assert.fail(`no "Arrived" button on the cardiology list of ${cardiologyDay}`);
  }
  await page.goto(`${srv.url}/ui/clinic/sched-qeh-cardiology/print?date=${cardiologyDay}`);
  await axe(page, 'clinic print view');
  // Book, check answers, then the same slot again: the refusal.
  await page.goto(`${srv.url}/ui/book?patient=pat-000040`);
  await axe(page, 'book (no clinic chosen)');
  const bmh = await page.$$eval('#clinic option', (os) => os.filter((o) => o.textContent.trim().endsWith('BMH')).map((o) => o.value));
  await page.selectOption('#clinic', bmh[3]);
  await clickNav(page, page.getByRole('button', { name: 'Find free slots' }));
  await axe(page, 'book (free slots)');
  await clickNav(page, page.getByRole('link', { name: /^Choose/ }).first());
  const checkUrl = page.url();
  await axe(page, 'check answers');
  await screenshot(page, 'book-check');
  await clickNav(page, page.getByRole('button', { name: 'Confirm booking' }));
  await page.goto(checkUrl);
  const resp = page.waitForResponse((r) => r.url().endsWith('/ui/book/confirm'));
  await clickNav(page, page.getByRole('button', { name: 'Confirm booking' }));
  assert.equal((await resp).status(), 409);
  assert.match(await text(page, 'main'), /taken/);
  await axe(page, 'slot-taken refusal');
  await page.goto(srv.url + '/ui/patient/nope');
  await axe(page, 'error page');
  await ctx.close();

  // Admin screens: outage console with an incident (declared far ahead at BMH), ops.
  const admin = await session('admin.demo');
  await admin.page.goto(srv.url + '/ui/outage');
  await axe(admin.page, 'outage console (empty)');
  const d = new Date(today + 'T12:00:00Z');
  d.setUTCDate(d.getUTCDate() + 20);
  await admin.page.click('summary');
  await admin.page.fill('#start', d.toISOString().slice(0, 10));
  await admin.page.fill('#end', d.toISOString().slice(0, 10));
  await admin.page.fill('#sites', 'BMH');
  await admin.page.fill('#description', 'axe drill');
  await clickNav(admin.page, admin.page.getByRole('button', { name: 'Declare the incident' }));
  await axe(admin.page, 'outage console with an incident');
  await admin.page.goto(srv.url + '/ui/ops');
  await axe(admin.page, 'ops');
  await screenshot(admin.page, 'ops');
  await admin.ctx.close();
});

// ---------------------------------------------------------------- print

test('print: the NHS number (record) and the clinic name and date (clinic list) are on every PDF page', async () => {
  const { ctx, page } = await session('dr.demo');
  const patient = first.id;
  const nhs = nhs334(nhsOf(first));
  let pages = pdfPages(await (async () => { await page.goto(`${srv.url}/ui/patient/${patient}/print`); return page.pdf({ format: 'A4' }); })());
  for (let k = 0; pages.length < 2 && k < 8; k++) {
    await page.goto(`${srv.url}/ui/patient/${patient}/note`);
    await page.fill('#note', `Long print-test note ${k}. ` + 'Reviewed in clinic; observations stable, plan discussed with the patient and family. '.repeat(40));
    await clickNav(page, page.getByRole('button', { name: 'Save note' }));
    await page.goto(`${srv.url}/ui/patient/${patient}/print`);
    pages = pdfPages(await page.pdf({ format: 'A4' }));
  }
  assert.ok(pages.length >= 2, `record print spans ${pages.length} page(s)`);
  pages.forEach((p, n) => assert.ok(p.includes(nhs), `record PDF page ${n + 1} of ${pages.length} lacks NHS No. ${nhs}:\n${p.slice(0, 300)}`));

  await page.goto(`${srv.url}/ui/clinic/sched-qeh-cardiology/print?date=${cardiologyDay}`);
  const h1 = await page.locator('h1').innerText();
  const clinic = await page.locator('h1').evaluate((e) => e.firstChild.textContent.trim());
  const day = await page.locator('h1 .nhsuk-caption-l').innerText();
  const cpages = pdfPages(await page.pdf({ format: 'A4' }));
  assert.ok(cpages.length >= 1, h1);
  cpages.forEach((p, n) => assert.ok(p.includes(clinic) && p.includes(day.replace(/\s+/g, ' ').trim()),
    `clinic PDF page ${n + 1} of ${cpages.length} lacks "${clinic}" / "${day}":\n${p.slice(0, 300)}`));
  await ctx.close();
});

// ---------------------------------------------------------------- reflow

test('reflow: at 320 px wide, find, record and clinic list do not scroll sideways', async () => {
  const { ctx, page } = await session('dr.demo', 'mouse', { viewport: { width: 320, height: 720 } });
  for (const path of ['/ui/', `/ui/patient/${first.id}`, `/ui/clinic/sched-qeh-cardiology?date=${cardiologyDay}`]) {
    await page.goto(srv.url + path);
    const w = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(w <= 320, `${path}: scrollWidth ${w} > 320`);
  }
  await ctx.close();
});

// ---------------------------------------------------------------- weight

test('weight: find after sign-in <= 100 KB, no fonts, no other hosts; record <= 30 KB with the CSS cached', async (t) => {
  const ctx = await newContext('mouse');
  const page = await ctx.newPage();
  await signIn(page, srv.url, 'dr.demo', pw['dr.demo']);
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Network.enable');
  let bytes = 0; let fonts = 0; const hosts = new Set(); let requests = 0;
  cdp.on('Network.loadingFinished', (e) => { bytes += e.encodedDataLength; });
  cdp.on('Network.responseReceived', (e) => { if (e.type === 'Font') fonts++; });
  cdp.on('Network.requestWillBeSent', (e) => { requests++; const u = new URL(e.request.url); if (u.protocol.startsWith('http')) hosts.add(u.hostname); });
  // First page: nothing cached.
  await cdp.send('Network.clearBrowserCache');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
  await page.goto(srv.url + '/ui/');
  await page.waitForLoadState('networkidle');
  const firstBytes = bytes;
  t.diagnostic(`find (first page, cold): ${firstBytes} bytes in ${requests} requests, ${fonts} fonts, hosts ${[...hosts].join(',')}`);
  assert.ok(firstBytes <= 100 * 1024, `find transferred ${firstBytes} bytes`);
  assert.equal(fonts, 0);
  assert.deepEqual([...hosts], ['127.0.0.1']);
  // Warm the cache, then a later page.
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: false });
  await page.goto(srv.url + '/ui/clinics');
  await page.waitForLoadState('networkidle');
  bytes = 0; requests = 0;
  await page.goto(`${srv.url}/ui/patient/${first.id}`);
  await page.waitForLoadState('networkidle');
  t.diagnostic(`record (CSS cached): ${bytes} bytes in ${requests} requests`);
  assert.ok(bytes <= 30 * 1024, `record transferred ${bytes} bytes`);
  assert.equal(fonts, 0);
  assert.deepEqual([...hosts], ['127.0.0.1']);
  await ctx.close();
});
