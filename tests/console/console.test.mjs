// Shoal's web console in a real headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core, against a real `shoal serve` booting real local clusters.
// tests/tests/console.rs starts the coordinator (tests/src/coordinator.rs: its own
// state dir, VPC range and name prefix) and runs this file with node's test runner:
//
//   SHOAL_URL, SHOAL_TOKEN        the operator listener and its token
//   SHOAL_BIN, SHOAL_STATE_DIR    the CLI, to compare its timeline SVG with the page's
//   SHOAL_CLUSTER                 the name of the cluster to create (unique per run)
//   SHOAL_NODES                   its node count (2 in CI)
//   SHOAL_SHOTS                   where screenshots go (checked here, kept for people)
//
// The steps run in order and share one browser: a wrong token, login, a cluster
// created from the form and watched to AVAILABLE without a reload (in its page and in
// the list, in two tabs), its timeline, screenshots checked pixel by pixel, forged
// writes (no session, a wrong CSRF token, a cross-site form, framing), a scale and a
// repair from their forms, the 375 px
// layout, accessibility rules (axe-core), and a keyboard-only flow that deletes it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set (tests/tests/console.rs sets it)`);
  return v;
};
const URL_ = env('SHOAL_URL').replace(/\/$/, '');
const TOKEN = env('SHOAL_TOKEN');
const NAME = env('SHOAL_CLUSTER');
const NODES = Number(env('SHOAL_NODES', '2'));
const SHOTS = env('SHOAL_SHOTS');
const SHOAL = env('SHOAL_BIN');
const STATE_DIR = env('SHOAL_STATE_DIR');
const BOOT_MS = 180_000;
mkdirSync(SHOTS, { recursive: true });

const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

// What this machine's closed network needs (docs of the machine: Chromium's own
// background connections are refused, so they are turned off).
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

let browser;
let ctx; // the logged-in browser context (mouse and keyboard steps)
let page; // its main tab
const problems = []; // console errors and CSP violations seen anywhere

function watch(p) {
  p.on('pageerror', (e) => problems.push(`page error on ${p.url()}: ${e.message}`));
  p.on('console', (m) => {
    const t = m.text();
    // The refusals this test asks for on purpose (401, 403, the 409 of a taken name,
    // the 422 of missing images) are logged as failed loads.
    if (m.type() === 'error' && !/status of 4(01|03|09|22)/.test(t)) problems.push(`console error on ${p.url()}: ${t}`);
    if (/Content Security Policy/i.test(t)) problems.push(`CSP violation on ${p.url()}: ${t}`);
  });
}

before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await ctx.newPage();
  watch(page);
});

after(async () => {
  if (browser) await browser.close();
});

/// Looks at a PNG in the browser itself (a canvas): size, distinct colours, and how
/// many pixels are near each colour asked about.
async function lookAt(png, colours = {}) {
  const scratch = await browser.newPage();
  try {
    return await scratch.evaluate(async ({ b64, colours }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.width;
      c.height = img.height;
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      const counts = Object.fromEntries(Object.keys(colours).map((k) => [k, 0]));
      let notBackground = 0;
      for (let i = 0; i < d.length; i += 4) {
        const [r, gg, b] = [d[i], d[i + 1], d[i + 2]];
        seen.add((r << 16) | (gg << 8) | b);
        if (!(r > 250 && gg > 250 && b > 250)) notBackground++;
        for (const [k, [cr, cg, cb]] of Object.entries(colours)) {
          if (Math.abs(r - cr) + Math.abs(gg - cg) + Math.abs(b - cb) <= 12) counts[k]++;
        }
      }
      return { width: c.width, height: c.height, distinct: seen.size, notBackground, counts };
    }, { b64: png.toString('base64'), colours });
  } finally {
    await scratch.close();
  }
}

async function shot(p, file, opts = {}) {
  const png = await p.screenshot({ path: path.join(SHOTS, file), ...opts });
  return png;
}

function assertNotBlank(info, what) {
  assert.ok(info.width > 300 && info.height > 200, `${what}: ${info.width}x${info.height}`);
  assert.ok(info.distinct > 50, `${what} has ${info.distinct} colours: blank?`);
  assert.ok(info.notBackground > info.width * info.height * 0.03, `${what} is nearly all white`);
}

let axeChecked = false;

async function axe(p, what) {
  if (!axeChecked) {
    // Once: axe, as loaded here, does find a violation where there is one.
    const bad = await browser.newPage();
    await bad.setContent('<!doctype html><html lang="en"><title>t</title><main><input type="text"></main></html>');
    await bad.evaluate(AXE);
    const r = await bad.evaluate(() => window.axe.run(document, { runOnly: { type: 'rule', values: ['label'] } }));
    await bad.close();
    assert.equal(r.violations.length, 1, 'axe does not see an unlabelled input');
    axeChecked = true;
  }
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  await p.evaluate(AXE);
  const r = await p.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
  }));
  const v = r.violations.map((x) => `${x.id} (${x.impact}): ${x.help} at ${x.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  assert.deepEqual(v, [], `${what}: accessibility violations`);
}

async function focusedOutline(p) {
  return p.evaluate(() => {
    const el = document.activeElement;
    const s = getComputedStyle(el);
    return { tag: el.tagName, id: el.id, text: (el.textContent || '').trim().slice(0, 40), style: s.outlineStyle, width: parseFloat(s.outlineWidth) };
  });
}

test('a wrong token is refused', async () => {
  const r = await page.goto(`${URL_}/console/`);
  assert.equal(new URL(page.url()).pathname, '/console/login', 'pages lead to the login page');
  assert.equal(r.status(), 200);
  await shot(page, 'login.png');
  await page.fill('#token', 'not-the-token');
  const [resp] = await Promise.all([
    page.waitForResponse((x) => x.url().endsWith('/console/login') && x.request().method() === 'POST'),
    page.click('button[type=submit]'),
  ]);
  assert.equal(resp.status(), 401);
  await page.waitForSelector('#login-error');
  assert.match(await page.textContent('#login-error'), /not the operator token/);
  assert.equal(await page.getAttribute('#token', 'aria-invalid'), 'true');
  assert.deepEqual(await ctx.cookies(), [], 'no cookie for a wrong token');
});

test('log in with the operator token: an HttpOnly, SameSite=Strict session cookie', async () => {
  await page.fill('#token', TOKEN);
  await Promise.all([page.waitForURL(`${URL_}/console/`), page.press('#token', 'Enter')]);
  const cookies = await ctx.cookies();
  assert.equal(cookies.length, 1, JSON.stringify(cookies));
  const [c] = cookies;
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, 'Strict');
  assert.equal(c.path, '/');
  assert.notEqual(c.value, TOKEN);
  assert.ok(c.expires > Date.now() / 1000, 'the session expires');
  assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read it');
  await page.waitForSelector('[data-live-status].on', { timeout: 10_000 });
});

test('the OpenAPI document and the metrics open with the session', async () => {
  const docs = await ctx.newPage();
  watch(docs);
  await page.bringToFront();
  for (const [link, check] of [
    ['API (OpenAPI)', (t) => assert.equal(JSON.parse(t).openapi, '3.0.3')],
    ['Metrics', (t) => assert.match(t, /shoal_clusters\{state="AVAILABLE"\}/)],
  ]) {
    const href = await page.getAttribute(`nav a:text-is("${link}")`, 'href');
    const r = await docs.goto(`${URL_}${href}`);
    assert.equal(r.status(), 200, link);
    check(await r.text());
  }
  await docs.close();
});

test('an uploaded blueprint is read, and checked before anything is made', async () => {
  await page.goto(`${URL_}/console/new`);
  await page.fill('#name', `${NAME}-up`);
  await page.check('#provider-local');
  await page.fill('#nodes', '1');
  assert.equal(await page.isChecked('#blueprint-upload'), false);
  // An image no local VM has: the local provider refuses it before recording
  // anything (its message names the image and the tarball it looks for).
  await page.setInputFiles('#blueprint_file', {
    name: 'mine.toml',
    mimeType: 'application/toml',
    buffer: Buffer.from('name = "mine"\n[[group]]\nname = "all"\ncount = "rest"\n[[group.container]]\nname = "app"\nimage = "registry.example.com/app:1"\n'),
  });
  assert.equal(await page.isChecked('#blueprint-upload'), true, 'choosing a file chooses "a blueprint file"');
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/console/clusters') && r.request().method() === 'POST'),
    page.click('button:text-is("Create")'),
  ]);
  assert.equal(resp.status(), 422);
  const error = await page.textContent('#form-error');
  assert.match(error, /registry\.example\.com\/app:1/);
  assert.match(error, /registry\.example\.com_app_1\.tar/);
  assert.equal(await page.inputValue('#name'), `${NAME}-up`, 'what was typed is kept');
  await page.goto(`${URL_}/console/`);
  assert.equal(await page.locator(`tr[data-name="${NAME}-up"]`).count(), 0, 'nothing was recorded');
});

let listTab;
let seenStates;

test(`create a ${NODES}-node local demo cluster from the form and watch it reach AVAILABLE without reloading`, { timeout: BOOT_MS + 60_000 }, async () => {
  // A second tab keeps the list open: it must follow the cluster too.
  listTab = await ctx.newPage();
  watch(listTab);
  await listTab.goto(`${URL_}/console/`);
  await listTab.waitForSelector('[data-live-status].on');
  await listTab.evaluate(() => { window.notReloaded = true; });
  await page.bringToFront();

  await page.click('main a.button:text-is("Create a cluster")');
  await page.waitForURL(`${URL_}/console/new`);
  await axe(page, 'the create form');
  await page.fill('#name', NAME);
  await page.check('#provider-local');
  await page.fill('#nodes', String(NODES));
  await page.check('#blueprint-demo');
  await Promise.all([page.waitForURL(`**/console/clusters/${NAME}?created=1`), page.click('button:text-is("Create")')]);
  assert.match(await page.textContent('.notice'), /was requested/);
  // From here on, no navigation: everything arrives over the event stream.
  await page.evaluate(() => {
    window.notReloaded = true;
    window.seenStates = [];
    const record = () => {
      const el = document.querySelector('[data-live="summary"] [data-state]');
      const s = el && el.dataset.state;
      if (s && window.seenStates[window.seenStates.length - 1] !== s) window.seenStates.push(s);
    };
    record();
    new MutationObserver(record).observe(document.querySelector('[data-live="summary"]'), { childList: true, subtree: true });
  });
  await page.waitForSelector('[data-live="summary"] [data-state="AVAILABLE"]', { timeout: BOOT_MS });
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was not reloaded');
  seenStates = await page.evaluate(() => window.seenStates);
  assert.ok(seenStates.length >= 2 && seenStates.at(-1) === 'AVAILABLE', `states seen live: ${seenStates}`);
  assert.ok(!seenStates.includes('FAILED'), `states seen live: ${seenStates}`);
  // Screen readers were told.
  await page.waitForFunction((n) => document.getElementById('announce').textContent.includes(`${n} is now AVAILABLE`), NAME, { timeout: 5000 });

  // Nodes: every one ready, with its address and containers at overlay addresses.
  const rows = page.locator('[data-live="nodes"] tbody tr');
  assert.equal(await rows.count(), NODES);
  for (let i = 0; i < NODES; i++) {
    const row = rows.nth(i);
    assert.equal(await row.getAttribute('data-phase'), 'ready');
    assert.match(await row.locator('td[data-label="Address"]').textContent(), /^\d+\.\d+\.\d+\.\d+$/);
    const containers = await row.locator('td[data-label="Containers"] li').allTextContents();
    assert.ok(containers.length >= 1, `node-${i} has no containers`);
    for (const c of containers) assert.match(c, /running \d+\.\d+\.\d+\.\d+/);
  }
  assert.match(await page.textContent('[data-live="summary"]'), new RegExp(`${NODES} of ${NODES}`));

  // The list in the other tab followed it too, without a reload.
  const row = listTab.locator(`tr[data-name="${NAME}"]`);
  await row.waitFor();
  await listTab.waitForSelector(`tr[data-name="${NAME}"][data-state="AVAILABLE"]`, { timeout: 10_000 });
  assert.equal(await listTab.evaluate(() => window.notReloaded), true, 'the list was not reloaded');
});

test('its boot timeline: the same SVG as `shoal cluster timeline --svg`, live on its page', async () => {
  const svg = page.locator('[data-live="timeline"] svg');
  await svg.waitFor();
  // One bar per stage per node; the title names the cluster and time to AVAILABLE.
  assert.match(await svg.locator('title').first().textContent(), new RegExp(`${NAME}: ${NODES} nodes on local, AVAILABLE in`));
  const fromPage = await page.evaluate(() => document.querySelector('[data-live="timeline"] svg').outerHTML);
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/timeline.svg')),
    page.click('#timeline-svg-link'),
  ]);
  assert.equal(resp.status(), 200);
  assert.equal(resp.headers()['content-type'], 'image/svg+xml');
  const served = await resp.text();
  writeFileSync(path.join(SHOTS, 'timeline.svg'), served);
  const cli = execFileSync(SHOAL, ['--state-dir', STATE_DIR, 'cluster', 'timeline', NAME, '--svg', '-'], { encoding: 'utf8' });
  assert.equal(served, cli, 'the console serves the CLI\'s SVG');
  // The inline picture is that SVG, as the browser parsed it: same bars.
  const bars = (s) => (s.match(/<rect x="\d+" y="\d+" width="\d+" height="18"/g) || []).length;
  assert.ok(bars(cli) >= NODES * 5, `${bars(cli)} bars`);
  assert.equal(bars(fromPage.replace(/ shape-rendering="crispEdges"/g, '')), bars(cli.replace(/ shape-rendering="crispEdges"/g, '')));
  await shot(page, 'timeline.png');
  await page.goBack();
  await page.waitForSelector('[data-live="summary"] [data-state="AVAILABLE"]');
});

test('screenshots: not blank, and the cluster is in them', async () => {
  // The cluster's page, whole: the README's picture (docs/console.png) is one of these.
  const full = await lookAt(await shot(page, 'cluster.png', { fullPage: true }), {
    available: [0x2f, 0x7d, 0x32], containers: [0xf2, 0x8e, 0x2b], network: [0x76, 0xb7, 0xb2],
  });
  assertNotBlank(full, 'the cluster page');
  assert.ok(full.counts.available > 200, `no AVAILABLE badge in the picture: ${JSON.stringify(full.counts)}`);
  assert.ok(full.counts.containers > 500 && full.counts.network > 100, `no timeline bars in the picture: ${JSON.stringify(full.counts)}`);

  await page.click('nav a:text-is("Clusters")');
  await page.waitForURL(`${URL_}/console/`);
  const list = await lookAt(await shot(page, 'list.png'), {});
  assertNotBlank(list, 'the list page');
  const row = page.locator(`tr[data-name="${NAME}"]`);
  assert.ok(await row.isVisible(), 'the row is on screen');
  const box = await row.boundingBox();
  assert.ok(box.y + box.height <= 900, 'the row is inside the screenshot');
  const rowShot = await lookAt(await row.screenshot({ path: path.join(SHOTS, 'list-row.png') }), { available: [0x2f, 0x7d, 0x32] });
  assert.ok(rowShot.counts.available > 100, `the row's picture has no AVAILABLE badge: ${JSON.stringify(rowShot.counts)}`);
  assert.equal(await row.locator('th a').textContent(), NAME);
  await axe(page, 'the list');
});

async function state(p) {
  await p.goto(`${URL_}/console/clusters/${NAME}`);
  return p.getAttribute('[data-live="summary"] [data-state]', 'data-state');
}

test('writes without the session, with a wrong CSRF token, or from another site are refused', async () => {
  const target = `${URL_}/console/clusters/${NAME}/delete`;
  const csrf = await page.getAttribute('form.logout input[name=csrf]', 'value');
  // No session at all (another browser context: no cookie).
  const stranger = await browser.newContext();
  let r = await stranger.request.post(target, { form: { csrf }, headers: { Origin: URL_ }, maxRedirects: 0 });
  assert.equal(r.status(), 401);
  // The session, but a wrong CSRF token (and none).
  r = await ctx.request.post(target, { form: { csrf: 'f'.repeat(64) }, headers: { Origin: URL_ }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  assert.match(await r.text(), /session token is missing or out of date/);
  r = await ctx.request.post(target, { form: { other: '1' }, headers: { Origin: URL_ }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  // The session and the right token, but from another origin.
  r = await ctx.request.post(target, { form: { csrf }, headers: { Origin: 'http://evil.test' }, maxRedirects: 0 });
  assert.equal(r.status(), 403);

  // A real cross-site attack: a page on another site posts a form to the console in
  // the logged-in browser. SameSite=Strict keeps the cookie off the request.
  const evil = await ctx.newPage();
  await evil.route('http://evil.test/**', (route) => route.fulfill({
    contentType: 'text/html',
    body: `<!doctype html><title>evil</title>
      <iframe id="f" src="${URL_}/console/"></iframe>
      <form id="x" method="post" action="${target}"><input name="csrf" value="${csrf}"></form>`,
  }));
  await evil.goto('http://evil.test/');
  // Framing is refused (frame-ancestors 'none', X-Frame-Options: DENY).
  await evil.waitForTimeout(500);
  const framed = evil.frames().find((f) => f !== evil.mainFrame());
  const framedLogin = framed ? await framed.$('#token').catch(() => null) : null;
  const framedList = framed ? await framed.$('[data-live-src]').catch(() => null) : null;
  assert.equal(framedLogin, null, 'the console rendered inside another site\'s frame');
  assert.equal(framedList, null, 'the console rendered inside another site\'s frame');
  const [resp] = await Promise.all([
    evil.waitForResponse((x) => x.url() === target),
    evil.evaluate(() => document.getElementById('x').submit()),
  ]);
  assert.equal(resp.status(), 401, 'the cross-site form arrived without the session');
  await evil.close();
  await stranger.close();
  // Nothing happened to the cluster.
  assert.equal(await state(page), 'AVAILABLE');
});

test('scale from the form: one node more, AVAILABLE again without a reload, the others where they were', { timeout: BOOT_MS + 30_000 }, async () => {
  await page.goto(`${URL_}/console/clusters/${NAME}`);
  await page.waitForSelector('[data-live-status].on');
  const addresses = async () => Object.fromEntries(await page.$$eval('[data-live="nodes"] tbody tr',
    (rows) => rows.map((r) => [r.dataset.node, r.querySelector('td[data-label="Address"]').textContent])));
  const before = await addresses();
  await Promise.all([page.waitForURL(`${URL_}/console/clusters/${NAME}/scale`), page.click('#action-scale')]);
  await axe(page, 'the scale form');
  // The group that grows is the last one (the demo's workers: "rest"), one node more.
  const options = await page.$$eval('#scale-group option', (os) => os.map((o) => [o.value, o.textContent]));
  const [group, label] = options.at(-1);
  const size = Number(/\((\d+) now\)/.exec(label)[1]);
  // Both at once is refused with the reason, and changes nothing.
  await page.selectOption('#scale-group', group);
  await page.fill('#scale-nodes', String(size + 1));
  await page.check('#remove-node-0');
  await Promise.all([page.waitForEvent('framenavigated'), page.click('#confirm')]);
  await page.waitForLoadState();
  assert.match(await page.textContent('main'), /not both/);
  assert.equal(await state(page), 'AVAILABLE');
  await page.goto(`${URL_}/console/clusters/${NAME}/scale`);
  await page.selectOption('#scale-group', group);
  await page.fill('#scale-nodes', String(size + 1));
  await Promise.all([page.waitForEvent('framenavigated'), page.click('#confirm')]);
  await page.waitForLoadState();
  assert.equal(page.url(), `${URL_}/console/clusters/${NAME}`, `the scale was refused: ${await page.textContent('main')}`);
  await page.waitForSelector('[data-live-status].on');
  await page.evaluate(() => { window.notReloaded = true; });
  await page.waitForSelector(`[data-live="nodes"] tbody tr[data-node="node-${NODES}"][data-phase="ready"]`, { timeout: BOOT_MS });
  await page.waitForSelector('[data-live="summary"] [data-state="AVAILABLE"]', { timeout: 30_000 });
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was not reloaded');
  assert.equal(await page.locator('[data-live="nodes"] tbody tr').count(), NODES + 1);
  // The nodes already there kept their VMs' addresses.
  const after = await addresses();
  assert.equal(Object.keys(before).length, NODES);
  for (const [node, addr] of Object.entries(before)) assert.equal(after[node], addr, `${node} moved`);
});

test('repair from the form: node-0 gets a new VM under the same id, AVAILABLE again', { timeout: BOOT_MS + 30_000 }, async () => {
  await page.goto(`${URL_}/console/clusters/${NAME}`);
  await Promise.all([page.waitForURL(`${URL_}/console/clusters/${NAME}/repair`), page.click('#action-repair')]);
  await page.check('#node-node-0');
  await Promise.all([page.waitForEvent('framenavigated'), page.click('#confirm')]);
  await page.waitForLoadState();
  assert.equal(page.url(), `${URL_}/console/clusters/${NAME}`, `the repair was refused: ${await page.textContent('main')}`);
  await page.waitForSelector('[data-live-status].on');
  // The CLI sees the repair as a change of the cluster (a new incarnation of node-0).
  await page.waitForSelector('[data-live="summary"] [data-state="AVAILABLE"]', { timeout: BOOT_MS });
  const show = JSON.parse(execFileSync(SHOAL, ['--state-dir', STATE_DIR, 'cluster', 'show', NAME, '--json'], { encoding: 'utf8' }));
  const n0 = show.nodes.find((n) => n.id === 'node-0');
  assert.ok(n0.incarnation >= 1, `node-0 was not given a new VM: ${JSON.stringify(n0)}`);
  assert.equal(n0.phase, 'ready');
  assert.equal(show.nodes.length, NODES + 1);
});

test('at 375 px wide: nothing sideways but the timeline, which scrolls by keyboard', async () => {
  const phone = await browser.newPage({ viewport: { width: 375, height: 812 }, storageState: await ctx.storageState() });
  watch(phone);
  for (const [p, file] of [['/console/', 'phone-list.png'], [`/console/clusters/${NAME}`, 'phone-cluster.png']]) {
    await phone.goto(`${URL_}${p}`);
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 375, `${p} is ${width}px wide at 375`);
    assertNotBlank(await lookAt(await shot(phone, file, { fullPage: true })), `${p} at 375 px`);
  }
  // The cluster page's nodes are cards, the state is on screen.
  assert.ok(await phone.isVisible('[data-live="summary"] .state'));
  const card = await phone.locator('[data-live="nodes"] tbody tr').first().boundingBox();
  assert.ok(card.width <= 375, `a node card is ${card.width}px`);
  const scroller = phone.locator('#timeline-scroll');
  const [sw, cw] = await scroller.evaluate((e) => [e.scrollWidth, e.clientWidth]);
  assert.ok(sw > cw, 'the timeline is wider than the screen, in its own scroller');
  await scroller.focus();
  await phone.keyboard.press('ArrowRight');
  await phone.keyboard.press('ArrowRight');
  await phone.waitForFunction(() => document.getElementById('timeline-scroll').scrollLeft > 0);
  await phone.goto(`${URL_}/console/`);
  const row = phone.locator(`tr[data-name="${NAME}"]`);
  assert.ok(await row.isVisible());
  assert.ok((await row.boundingBox()).width <= 375);
  await phone.close();
});

test('accessibility rules (axe-core) on the login page and the cluster page', async () => {
  await page.goto(`${URL_}/console/clusters/${NAME}`);
  await axe(page, 'the cluster page');
  const anon = await browser.newPage();
  await anon.goto(`${URL_}/console/login`);
  await axe(anon, 'the login page');
  await anon.close();
});

test('keyboard only: log in, find the cluster, open it, delete it, and see it DELETED', { timeout: 120_000 }, async () => {
  const kb = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const p = await kb.newPage();
  watch(p);
  const tab = async () => { await p.keyboard.press('Tab'); return focusedOutline(p); };
  // Tab (or Shift+Tab) until the focused element matches, recording the way there;
  // every element on the way must show its focus.
  const tabTo = async (want, back = false, max = 40) => {
    const way = [];
    for (let i = 0; i < max; i++) {
      await p.keyboard.press(back ? 'Shift+Tab' : 'Tab');
      const f = await focusedOutline(p);
      way.push(f.id || f.text || f.tag);
      assert.ok(f.style !== 'none' && f.width >= 2, `no visible focus on ${JSON.stringify(f)}`);
      if (want(f)) return way;
    }
    assert.fail(`never reached it by ${back ? 'Shift+' : ''}Tab: ${way.join(' → ')}`);
  };

  await p.goto(`${URL_}/console/login`);
  assert.equal((await focusedOutline(p)).id, 'token', 'the token field has the focus');
  await p.keyboard.type(TOKEN);
  await Promise.all([p.waitForURL(`${URL_}/console/`), p.keyboard.press('Enter')]);

  // The skip link comes first and takes the focus to the content.
  const first = await tab();
  assert.equal(first.text, 'Skip to content');
  await p.keyboard.press('Enter');
  assert.equal((await focusedOutline(p)).tag, 'MAIN');
  // From the content, Tab reaches the cluster's link (the page's own button first).
  const way = await tabTo((f) => f.id === `cluster-link-${NAME}`);
  assert.ok(way.includes('Create a cluster'), `focus order: ${way.join(' → ')}`);

  // The create form by keyboard. A node count of 0: the browser refuses to send it
  // and puts the focus on the field. Then a name that is taken: the server refuses
  // it, and its reason, in an alert, gets the focus.
  await tabTo((f) => f.text === 'Create a cluster', true);
  await Promise.all([p.waitForURL(`${URL_}/console/new`), p.keyboard.press('Enter')]);
  await tabTo((f) => f.id === 'name');
  await p.keyboard.type(NAME);
  await tabTo((f) => f.id === 'provider-local');
  await tabTo((f) => f.id === 'nodes');
  await p.keyboard.press('Control+A');
  await p.keyboard.type('0');
  await tabTo((f) => f.text === 'Create');
  await p.keyboard.press('Enter');
  await p.waitForTimeout(200);
  assert.equal(new URL(p.url()).pathname, '/console/new', 'an invalid form was sent');
  assert.equal((await focusedOutline(p)).id, 'nodes', 'the invalid field has the focus');
  await p.keyboard.press('Control+A');
  await p.keyboard.type('1');
  await Promise.all([p.waitForResponse((r) => r.url().endsWith('/console/clusters')), p.keyboard.press('Enter')]);
  await p.waitForSelector('#form-error');
  assert.equal((await focusedOutline(p)).id, 'form-error', 'the error summary has the focus');
  assert.match(await p.textContent('#form-error'), /exists/i);
  assert.equal(await p.inputValue('#name'), NAME, 'what was typed is kept');

  // To the cluster, then its Delete… action, then the confirmation, all by keyboard.
  await p.goto(`${URL_}/console/`);
  await tabTo((f) => f.id === `cluster-link-${NAME}`);
  await Promise.all([p.waitForURL(`${URL_}/console/clusters/${NAME}`), p.keyboard.press('Enter')]);
  await p.waitForSelector('[data-live-status].on');
  await tabTo((f) => f.id === 'action-delete');
  await Promise.all([p.waitForURL(`${URL_}/console/clusters/${NAME}/delete`), p.keyboard.press('Enter')]);
  await tabTo((f) => f.id === 'confirm');
  await Promise.all([p.waitForURL(`${URL_}/console/clusters/${NAME}`), p.keyboard.press('Enter')]);
  // Unless the deletion was over before the page loaded, the page sees DELETED
  // arrive, and says so to screen readers.
  const initial = await p.getAttribute('[data-live="summary"] [data-state]', 'data-state');
  await p.waitForSelector('[data-live="summary"] [data-state="DELETED"]', { timeout: 60_000 });
  if (initial !== 'DELETED') {
    await p.waitForFunction((n) => document.getElementById('announce').textContent.includes(`${n} is now DELETED`), NAME, { timeout: 5000 });
  }
  // The list tab (mouse context) shows it among the deleted, without a reload.
  await listTab.waitForSelector(`#deleted-clusters tr[data-name="${NAME}"][data-state="DELETED"]`, { state: 'attached', timeout: 10_000 });
  assert.equal(await listTab.locator(`tr[data-name="${NAME}"]`).count(), 1, 'listed once, among the deleted');
  assert.equal(await listTab.evaluate(() => window.notReloaded), true);

  // Log out by keyboard: the session is gone.
  await p.focus('form.logout button');
  await Promise.all([p.waitForURL(`${URL_}/console/login`), p.keyboard.press('Enter')]);
  await p.goto(`${URL_}/console/`);
  assert.equal(new URL(p.url()).pathname, '/console/login');
  await kb.close();
});

test('no console error and no Content-Security-Policy violation on any page', () => {
  assert.deepEqual(problems, []);
});
