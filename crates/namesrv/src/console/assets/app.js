// SofaMQ console: plain DOM, no libraries. Every piece of server data goes into the
// page through textContent (the h() helper below never parses HTML).
'use strict';

const S = { session: null, timer: null, hist: [], poller: null, topicRates: {} };
const HISTORY = 300; // samples kept for the charts (2 s apart: 10 minutes)

function h(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (id) => document.getElementById(id);
const main = () => $('main');
function show(...nodes) { main().replaceChildren(...nodes.filter(n => n !== null && n !== undefined && n !== false)); }
function flash(msg, info) { const f = $('flash'); f.className = info ? 'info' : ''; f.textContent = msg || ''; }
const fmt = (n) => (n === null || n === undefined) ? '-' : Number(n).toLocaleString('en-US');
function bytes(n) { const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; n = Number(n) || 0; while (n >= 1024 && i < 4) { n /= 1024; i++; } return n.toFixed(1) + ' ' + u[i]; }
const when = (ms) => ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', '') : '-';

class HttpError extends Error { constructor(status, msg) { super(msg); this.status = status; } }

async function api(path, body) {
  const opt = { credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    opt.method = 'POST';
    opt.headers['content-type'] = 'application/json';
    opt.headers['x-csrf-token'] = (S.session && S.session.csrf) || '';
    opt.body = JSON.stringify(body);
  }
  const r = await fetch('/console/api/' + path, opt);
  let j = null;
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 && path !== 'login') { S.session = null; renderLogin('Your session ended; log in again.'); throw new HttpError(401, 'login required'); }
  if (!r.ok) throw new HttpError(r.status, (j && j.error) || ('HTTP ' + r.status));
  return j;
}

function table(cols, rows, opts) {
  opts = opts || {};
  if (!rows.length) return h('p', { class: 'empty' }, opts.empty || 'Nothing to show.');
  const head = h('tr', {}, cols.map(c => h('th', { class: c.num ? 'num' : null }, c.t)));
  const body = rows.map(r => {
    const tr = h('tr', { class: opts.click ? 'clickable' : null, onclick: opts.click ? () => opts.click(r) : null },
      cols.map(c => { const v = c.v(r); return h('td', { class: c.num ? 'num' : null }, v); }));
    return tr;
  });
  return h('table', { id: opts.id }, h('thead', {}, head), h('tbody', {}, body));
}

function errorsBlock(errors) {
  if (!errors || !errors.length) return null;
  return h('div', { class: 'card err' }, errors.map(e => h('div', {}, 'Broker ' + (e.group || e.broker) + (e.address ? ' (' + e.address + ')' : '') + ' is not answering: ' + e.error)));
}

function stopTimer() { if (S.timer) { clearInterval(S.timer); S.timer = null; } }
function every(ms, fn) { stopTimer(); S.timer = setInterval(fn, ms); }

// ---- login ---------------------------------------------------------------
function renderLogin(msg) {
  stopTimer();
  $('who').replaceChildren();
  const key = h('input', { id: 'login-key', placeholder: 'access key', autocomplete: 'username' });
  const secret = h('input', { id: 'login-secret', type: 'password', placeholder: 'secret key', autocomplete: 'current-password' });
  const err = h('p', { id: 'login-error', class: 'err' }, msg || '');
  const form = h('form', { class: 'card login', onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    try {
      await api('login', { access_key: key.value, secret_key: secret.value });
      await start();
    } catch (e) { err.textContent = 'Login failed: ' + e.message; }
  } }, h('h2', {}, 'Log in'), h('p', { class: 'empty' }, 'ACL is on: use an admin user of the brokers.'), key, secret,
  h('button', { id: 'login-submit', type: 'submit' }, 'Log in'), err);
  show(form);
}

// ---- cluster -------------------------------------------------------------
async function pageCluster() {
  const d = await api('cluster');
  const ctl = d.controller;
  const parts = [h('h2', {}, 'Cluster')];
  if (ctl && ctl.error) parts.push(h('div', { class: 'card err' }, 'Controller not answering: ' + ctl.error));
  if (ctl && !ctl.error) parts.push(h('p', {}, 'Controller: node ' + ctl.node + ', leader ' + (ctl.leader_addr || ctl.leader || 'unknown') + ', term ' + ctl.term + (ctl.catching_up ? ', catching up: ' + ctl.catching_up : '')));
  if (!d.groups.length) parts.push(h('p', { class: 'empty' }, 'No broker group is registered with this name server.'));
  for (const g of d.groups) {
    const cg = ctl && ctl.groups ? ctl.groups.find(x => x.group === g.group) : null;
    parts.push(h('h3', {}, g.group + ' (' + g.cluster + ')'));
    if (cg) {
      parts.push(h('p', {}, 'Controller view: master ' + (cg.master === null ? 'none' : 'broker ' + cg.master) + ', epoch ' + cg.master_epoch + ', in-sync {' + cg.insync.join(', ') + '}' + (ctl.unavailable && ctl.unavailable[g.group] ? ' — unavailable: ' + ctl.unavailable[g.group] : '')));
    } else if (ctl && !ctl.error) {
      parts.push(h('p', { class: 'warn' }, 'The controller does not know this group.'));
    }
    const master = g.members.find(m => m.role === 'master');
    // The controller numbers replicas its own way: pair them by client address.
    const ctlId = (m) => { if (!cg) return null; const e = Object.entries(cg.brokers || {}).find(([, a]) => a.grpc === m.address); return e ? Number(e[0]) : null; };
    const lagOf = (m) => {
      if (m.role === 'master' || !master || !master.slaves) return '-';
      const s = master.slaves.length === 1 ? master.slaves[0] : master.slaves.find(s => s.name.startsWith(g.group + '/' + ctlId(m) + '@'));
      return s ? bytes(s.lag_bytes) : '-';
    };
    parts.push(table([
      { t: 'ID', num: 1, v: m => m.broker_id },
      { t: 'Role', v: m => m.role || '?' },
      { t: 'Epoch', num: 1, v: m => m.epoch ?? '-' },
      { t: 'Address', v: m => m.address },
      { t: 'In sync', v: m => m.role === 'master' ? (m.in_sync_slaves + 1) + ' of min ' + m.min_insync_replicas : (cg ? (cg.insync.includes(ctlId(m)) ? 'yes (controller)' : 'no (controller)') : '-') },
      { t: 'Controller', v: m => !cg ? '-' : (ctlId(m) === null ? 'unknown to it' : 'replica ' + ctlId(m) + (cg.master === ctlId(m) ? ', master' : '') + (ctl.last_seen_ms && ctl.last_seen_ms[g.group + '/' + ctlId(m)] !== undefined ? ', seen ' + ctl.last_seen_ms[g.group + '/' + ctlId(m)] + ' ms ago' : '')) },
      { t: 'Lag', num: 1, v: lagOf },
      { t: 'Log end', num: 1, v: m => fmt(m.log_end_offset) },
      { t: 'Disk', num: 1, v: m => m.disk_bytes === undefined ? '-' : bytes(m.disk_bytes) },
      { t: 'Heartbeat', num: 1, v: m => m.heartbeat_age_ms + ' ms ago' },
      { t: 'Health', v: m => m.error ? h('span', { class: 'err' }, 'DOWN: ' + m.error) : (m.fenced_reason ? h('span', { class: 'err' }, 'FENCED: ' + m.fenced_reason) : h('span', { class: 'ok' }, 'ok')) },
    ], g.members));
  }
  show(...parts);
}

// ---- topics --------------------------------------------------------------
async function pageTopics() {
  const d = await api('topics');
  const name = h('input', { id: 'topic-name', placeholder: 'topic name', required: true });
  const queues = h('input', { id: 'topic-queues', type: 'number', min: 1, value: 8, style: 'width:6em' });
  const type = h('select', { id: 'topic-type' }, ['NORMAL', 'FIFO', 'DELAY', 'TRANSACTION'].map(t => h('option', {}, t)));
  const create = h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api('topics', { name: name.value, queues: Number(queues.value), message_type: type.value });
      const bad = r.results.filter(x => x.error);
      if (bad.length) flash('Create failed on ' + bad.map(x => x.group + ': ' + x.error).join('; '));
      else flash('Topic ' + name.value + ' created.', true);
      route();
    } catch (e) { flash(e.message); }
  } }, name, queues, type, h('button', { id: 'topic-create', type: 'submit' }, 'Create topic'));
  const filter = h('input', { id: 'topic-filter', placeholder: 'filter' });
  const rate = (t, k) => { const r = S.topicRates[t.name]; return r ? r[k].toFixed(1) : '-'; };
  const visible = d.topics.filter(t => !t.name.startsWith('%'));
  const render = () => {
    const f = filter.value.toLowerCase();
    const rows = visible.filter(t => t.name.toLowerCase().includes(f));
    const tbl = table([
      { t: 'Topic', v: t => t.name },
      { t: 'Type', v: t => t.type },
      { t: 'Brokers', v: t => t.groups.join(', ') },
      { t: 'Queues', num: 1, v: t => t.queues.length },
      { t: 'Messages', num: 1, v: t => fmt(t.messages) },
      { t: 'In msg/s', num: 1, v: t => rate(t, 'in') },
      { t: 'Out msg/s', num: 1, v: t => rate(t, 'out') },
      { t: '', v: t => h('button', { class: 'danger', onclick: async (ev) => {
        ev.stopPropagation();
        if (!confirm('Delete topic ' + t.name + ' on every broker group?')) return;
        try { await api('topics/delete', { name: t.name }); flash('Topic ' + t.name + ' deleted.', true); route(); } catch (e) { flash(e.message); }
      } }, 'Delete') },
    ], rows, { id: 'topics-table', empty: visible.length ? 'No topic matches the filter.' : 'No topics yet. Create one above.', click: t => showQueues(t) });
    $('topics-list').replaceChildren(tbl);
  };
  filter.addEventListener('input', render);
  show(h('h2', {}, 'Topics'), errorsBlock(d.errors), d.masters ? null : h('p', { class: 'err' }, 'No broker group has a master: nothing can be listed or created.'),
    create, filter, h('div', { id: 'topics-list' }), h('div', { id: 'topic-detail' }));
  render();
}

function showQueues(t) {
  $('topic-detail').replaceChildren(h('h3', {}, 'Queues of ' + t.name), table([
    { t: 'Broker', v: q => q.group }, { t: 'Queue', num: 1, v: q => q.queue_id },
    { t: 'Min offset', num: 1, v: q => fmt(q.min_offset) }, { t: 'Max offset', num: 1, v: q => fmt(q.max_offset) },
    { t: 'Messages', num: 1, v: q => fmt(q.max_offset - q.min_offset) },
  ], t.queues));
  $('topic-detail').scrollIntoView();
}

// ---- consumer groups -----------------------------------------------------
async function pageGroups() {
  const d = await api('groups');
  show(h('h2', {}, 'Consumer groups'), errorsBlock(d.errors), table([
    { t: 'Group', v: g => g.group }, { t: 'Topics', v: g => g.topics.join(', ') },
    { t: 'Lag', num: 1, v: g => fmt(g.lag) }, { t: 'In flight', num: 1, v: g => fmt(g.inflight) },
    { t: 'Consumers online', num: 1, v: g => new Set(g.consumers.map(c => c.client_id)).size },
  ], d.groups, { id: 'groups-table', empty: 'No consumer group has consumed anything yet.', click: g => { location.hash = '#group/' + encodeURIComponent(g.group); } }));
}

async function pageGroup(name) {
  const draw = async () => {
    const d = await api('groups?group=' + encodeURIComponent(name));
    const g = d.groups[0];
    if (!g) { show(h('h2', {}, 'Group ' + name), h('p', { class: 'empty' }, 'No such consumer group.')); return; }
    const lag = $('group-lag');
    if (lag) { lag.textContent = String(g.lag); $('group-queues').replaceChildren(queuesTable(g)); $('group-consumers').replaceChildren(consumersTable(g)); $('group-errors').replaceChildren(errorsBlock(d.errors) || ''); return; }
    const topic = h('select', { id: 'reset-topic' }, g.topics.map(t => h('option', {}, t)));
    const to = h('select', { id: 'reset-to' }, h('option', { value: 'earliest' }, 'earliest'), h('option', { value: 'latest' }, 'latest'), h('option', { value: 'time' }, 'time'));
    const at = h('input', { id: 'reset-time', type: 'datetime-local', step: 1 });
    const form = h('form', { class: 'inline', onsubmit: async (ev) => {
      ev.preventDefault();
      const ts = at.value ? new Date(at.value).getTime() : 0;
      if (to.value === 'time' && !ts) { flash('Pick a time.'); return; }
      if (!confirm('Reset ' + name + ' on ' + topic.value + ' to ' + to.value + '?')) return;
      try {
        const r = await api('groups/reset', { group: name, topic: topic.value, to: to.value, timestamp_ms: ts });
        const bad = r.results.filter(x => x.error);
        flash(bad.length ? 'Reset failed: ' + bad.map(x => x.broker + ': ' + x.error).join('; ') : 'Offsets reset.', !bad.length);
      } catch (e) { flash(e.message); }
    } }, 'Reset offset of topic', topic, 'to', to, at, h('button', { type: 'submit', id: 'reset-submit' }, 'Reset'));
    show(h('h2', {}, 'Group ' + name), h('div', { id: 'group-errors' }, errorsBlock(d.errors) || ''),
      h('p', {}, 'Total lag: ', h('b', { id: 'group-lag' }, String(g.lag)), ' messages; topics: ', g.topics.join(', '), '. Refreshes every 2 s.'),
      h('h3', {}, 'Consumers online'), h('div', { id: 'group-consumers' }, consumersTable(g)),
      h('h3', {}, 'Queues'), form, h('div', { id: 'group-queues' }, queuesTable(g)));
  };
  await draw();
  every(2000, () => draw().catch(e => flash(e.message)));
}

function consumersTable(g) {
  return table([{ t: 'Client id', v: c => c.client_id }, { t: 'Broker', v: c => c.broker }, { t: 'Last heard', num: 1, v: c => (c.last_seen_ms_ago / 1000).toFixed(1) + ' s ago' }],
    g.consumers, { id: 'consumers-table', empty: 'No consumer of this group called a broker in the last minute.' });
}

function queuesTable(g) {
  return table([
    { t: 'Broker', v: q => q.broker }, { t: 'Topic', v: q => q.topic }, { t: 'Queue', num: 1, v: q => q.queue_id },
    { t: 'Committed', num: 1, v: q => fmt(q.committed_offset) }, { t: 'Delivered to', num: 1, v: q => fmt(q.scan_offset) },
    { t: 'End', num: 1, v: q => fmt(q.max_offset) }, { t: 'Lag', num: 1, v: q => fmt(q.lag) }, { t: 'In flight', num: 1, v: q => q.inflight },
  ], g.queues, { empty: 'No queues.' });
}

// ---- messages ------------------------------------------------------------
function hexToBytes(hex) { const b = new Uint8Array(hex.length / 2); for (let i = 0; i < b.length; i++) b[i] = parseInt(hex.substr(i * 2, 2), 16); return b; }

function bodyView(m) {
  const bytesArr = hexToBytes(m.body_hex);
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytesArr);
  const pre = h('pre', { id: 'msg-body' });
  const set = (mode) => {
    if (mode === 'json') { try { pre.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { pre.textContent = 'Not JSON: ' + e.message; } }
    else if (mode === 'hex') { let out = ''; for (let i = 0; i < bytesArr.length; i += 16) { out += i.toString(16).padStart(8, '0') + '  ' + Array.from(bytesArr.slice(i, i + 16), x => x.toString(16).padStart(2, '0')).join(' ') + '\n'; } pre.textContent = out; }
    else pre.textContent = text;
  };
  set('text');
  return h('div', {}, h('div', { class: 'tabs' }, ['text', 'json', 'hex'].map(k => h('button', { class: 'secondary', type: 'button', onclick: () => set(k) }, k.toUpperCase()))),
    m.body_truncated ? h('p', { class: 'warn' }, 'Showing the first ' + m.body_hex.length / 2 + ' of ' + m.body_len + ' bytes.') : null, pre);
}

async function messageDetail(m) {
  const box = $('msg-detail');
  const props = Object.entries(m.properties || {}).sort();
  const loc = h('div', {}, h('p', { class: 'empty' }, 'Finding where it is…'));
  box.replaceChildren(h('div', { class: 'card' }, h('h3', {}, 'Message ' + m.message_id),
    table([{ t: 'Field', v: r => r[0] }, { t: 'Value', v: r => r[1] }], [
      ['Topic', m.topic], ['Broker / queue / offset', m.broker + ' / ' + m.queue_id + ' / ' + m.queue_offset], ['Log offset', m.log_offset],
      ['Tag', m.tag || '-'], ['Born', when(m.born_ms)], ['Stored', when(m.stored_ms)], ['Epoch', m.epoch], ['Body', m.body_len + ' bytes']]),
    h('h3', {}, 'Properties'), table([{ t: 'Key', v: r => r[0] }, { t: 'Value', v: r => r[1] }], props, { empty: 'No properties.' }),
    h('h3', {}, 'Body'), bodyView(m), h('h3', {}, 'Where it is'), loc));
  try {
    const q = new URLSearchParams({ broker: m.broker, topic: m.topic, queue: m.queue_id, offset: m.queue_offset, log_offset: m.log_offset });
    const l = await api('location?' + q);
    loc.replaceChildren(h('ul', { id: 'msg-location' },
      h('li', {}, 'Stored on ' + l.broker + ' (master ' + l.master + '): ' + (l.durable ? 'durable' : 'not yet durable') + ', ' + (l.readable ? 'acked by the in-sync replicas' : 'not yet replicated to enough replicas')),
      l.replicas.map(r => h('li', {}, 'Replica ' + r.name + ': ' + (r.has_it ? 'has it' : 'does not have it yet') + (r.in_sync ? ' (in sync)' : ' (not in sync)'))),
      l.groups.length ? l.groups.map(g => h('li', {}, 'Group ' + g.group + ': ' + g.state)) : h('li', {}, 'No consumer group reads this queue.')));
  } catch (e) { loc.replaceChildren(h('p', { class: 'err' }, 'Cannot tell: ' + e.message)); }
  box.scrollIntoView();
}

function messageList(msgs, empty) {
  return table([
    { t: 'Message id', v: m => m.message_id }, { t: 'Topic', v: m => m.topic }, { t: 'Broker', v: m => m.broker },
    { t: 'Queue', num: 1, v: m => m.queue_id }, { t: 'Offset', num: 1, v: m => m.queue_offset },
    { t: 'Keys', v: m => (m.properties && m.properties.__KEYS) || '' }, { t: 'Tag', v: m => m.tag },
    { t: 'Stored', v: m => when(m.stored_ms) }, { t: 'Size', num: 1, v: m => m.body_len },
  ], msgs, { id: 'msg-table', empty, click: messageDetail });
}

async function pageMessages() {
  const topic = h('input', { id: 'msg-topic', placeholder: 'topic' });
  const id = h('input', { id: 'msg-id', placeholder: 'message id' });
  const key = h('input', { id: 'msg-key', placeholder: 'key' });
  const results = h('div', { id: 'msg-results' });
  const find = h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams({ topic: topic.value, id: id.value, key: key.value });
    try {
      const d = await api('messages?' + q);
      results.replaceChildren(errorsBlock(d.errors) || '', d.scan_truncated ? h('p', { class: 'warn' }, 'The scan stopped at its budget: older messages were not searched.') : '',
        messageList(d.messages, 'No message matches.'));
    } catch (e) { results.replaceChildren(h('p', { class: 'err' }, e.message)); }
  } }, topic, id, key, h('button', { id: 'msg-find', type: 'submit' }, 'Find'));
  const bBroker = h('input', { id: 'browse-broker', placeholder: 'broker group', value: 'broker-a' });
  const bTopic = h('input', { id: 'browse-topic', placeholder: 'topic' });
  const bQueue = h('input', { id: 'browse-queue', type: 'number', min: 0, value: 0, style: 'width:5em' });
  const bOffset = h('input', { id: 'browse-offset', type: 'number', min: 0, placeholder: 'offset', style: 'width:8em' });
  const bTime = h('input', { id: 'browse-time', type: 'datetime-local', step: 1 });
  const browse = h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams({ broker: bBroker.value, topic: bTopic.value, queue: bQueue.value, count: 50 });
    if (bOffset.value !== '') q.set('offset', bOffset.value); else if (bTime.value) q.set('time_ms', new Date(bTime.value).getTime());
    try {
      const d = await api('queue?' + q);
      results.replaceChildren(h('p', {}, 'From offset ' + d.offset + ':'), messageList(d.messages, 'No messages from there.'));
    } catch (e) { results.replaceChildren(h('p', { class: 'err' }, e.message)); }
  } }, 'Browse', bBroker, bTopic, 'queue', bQueue, 'from offset', bOffset, 'or time', bTime, h('button', { type: 'submit' }, 'Browse'));
  show(h('h2', {}, 'Messages'), h('p', {}, 'Look up by id (any topic) or by key (topic required):'), find, browse, results, h('div', { id: 'msg-detail' }));
}

// ---- dead letters --------------------------------------------------------
async function pageDlq() {
  const d = await api('dlq');
  const parts = [h('h2', {}, 'Dead letters'), errorsBlock(d.errors)];
  if (!d.dlq.length) parts.push(h('p', { class: 'empty' }, 'No dead letters: no consumer group has given up on a message.'));
  for (const q of d.dlq) {
    const n = h('input', { type: 'number', min: 1, value: 1, style: 'width:6em', id: 'dlq-count-' + q.group });
    const picked = new Set();
    const report = (r, what) => {
      const bad = r.results.filter(x => x.error);
      const skipped = r.results.flatMap(x => (x.skipped || []).map(s => 'offset ' + s.offset + ': ' + s.reason));
      const n = r.results.reduce((a, x) => a + (x.resent || 0), 0);
      flash(bad.length ? 'Resend failed: ' + bad.map(x => x.broker + ': ' + x.error).join('; ')
        : 'Resent ' + n + ' dead letter(s) of ' + q.group + what + (skipped.length ? '; not resent: ' + skipped.join(', ') : '') + '.', !bad.length);
    };
    const resend = async (max) => {
      try { report(await api('dlq/resend', { group: q.group, max }), ''); await pageDlq(); } catch (e) { flash(e.message); }
    };
    const resendChosen = async () => {
      if (!picked.size) { flash('Choose dead letters first (the boxes in the first column).'); return; }
      try { report(await api('dlq/resend', { group: q.group, broker: q.broker, offsets: [...picked] }), ' (chosen)'); await pageDlq(); } catch (e) { flash(e.message); }
    };
    const box = (m) => m.resent ? '' : h('input', { type: 'checkbox', class: 'dlq-pick', 'data-offset': m.queue_offset,
      onclick: (ev) => { ev.stopPropagation(); if (ev.target.checked) picked.add(m.queue_offset); else picked.delete(m.queue_offset); } });
    parts.push(h('div', { class: 'card' }, h('h3', {}, 'Group ' + q.group + ' on ' + q.broker + ': ' + q.count + ' dead letter(s) stored'),
      h('form', { class: 'inline', onsubmit: (ev) => { ev.preventDefault(); resend(Number(n.value)); } },
        h('button', { type: 'button', id: 'dlq-resend-chosen-' + q.group, onclick: resendChosen }, 'Resend chosen'),
        h('button', { type: 'button', class: 'secondary', id: 'dlq-resend-all-' + q.group, onclick: () => resend(0) }, 'Resend all not yet resent'),
        'or the oldest', n, h('button', { type: 'submit', class: 'secondary' }, 'Resend these')),
      h('p', { class: 'empty' }, 'Each dead letter goes back to its topic once: chosen ones now, the rest oldest first.'),
      table([{ t: '', v: box }, { t: 'Message id', v: m => m.message_id }, { t: 'From topic', v: m => (m.properties && m.properties.__DLQ_TOPIC) || '' },
        { t: 'Offset', num: 1, v: m => m.queue_offset }, { t: 'Stored', v: m => when(m.stored_ms) }, { t: 'Size', num: 1, v: m => m.body_len },
        { t: 'Resent', v: m => m.resent ? 'yes' : 'no' }],
      q.messages, { id: 'dlq-table-' + q.group, click: m => { location.hash = '#messages'; setTimeout(() => messageDetail(m), 50); } })));
  }
  show(...parts);
}

// ---- ACL -----------------------------------------------------------------
async function pageAcl() {
  const d = await api('acl');
  const key = h('input', { id: 'acl-key', placeholder: 'access key' });
  const secret = h('input', { id: 'acl-secret', type: 'password', placeholder: 'secret key' });
  const admin = h('input', { type: 'checkbox' });
  const rules = h('input', { id: 'acl-rules', placeholder: 'rules, space separated: allow:topic:orders*:pub', style: 'width:26em' });
  const outcome = (r, done) => {
    const bad = r.results.filter(x => x.error);
    flash(bad.length ? bad.map(x => x.broker + ': ' + x.error).join('; ') : done, !bad.length);
  };
  const changeRules = async (user, add, remove) => {
    try { outcome(await api('acl/rules', { access_key: user, add, remove }), 'Rules of ' + user + ' saved.'); await pageAcl(); } catch (e) { flash(e.message); }
  };
  const form = h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      outcome(await api('acl/users', { access_key: key.value, secret_key: secret.value, admin: admin.checked, rules: rules.value.split(/[\s;]+/).filter(Boolean) }), 'User saved.');
      route();
    } catch (e) { flash(e.message); }
  } }, key, secret, h('label', {}, admin, ' admin'), rules, h('button', { type: 'submit', id: 'acl-save' }, 'Add / replace user'));
  const parts = [h('h2', {}, 'ACL'), S.session && !S.session.acl ? h('p', { class: 'warn' }, 'ACL is off on the brokers: users are stored but nothing is checked.') : null, form,
    h('p', { class: 'empty' }, 'A rule is allow|deny : topic|group : NAME (a trailing * matches a prefix) : pub, sub or pub,sub, e.g. allow:group:billing:sub. Changes go to every broker group.')];
  if (!d.brokers.length) parts.push(h('p', { class: 'empty' }, 'No broker group has a master.'));
  for (const b of d.brokers) {
    parts.push(h('h3', {}, 'Broker group ' + b.broker));
    if (b.error) { parts.push(h('p', { class: 'err' }, b.error)); continue; }
    const ruleCell = (u) => {
      const add = h('input', { class: 'acl-rule-new', 'data-user': u.access_key, placeholder: 'new rule', style: 'width:14em' });
      return h('div', {},
        u.rules.map(r => h('span', { class: 'pill' }, r, ' ', h('button', { type: 'button', class: 'link acl-rule-remove', 'data-user': u.access_key, 'data-rule': r, title: 'Remove this rule',
          onclick: () => changeRules(u.access_key, [], [r]) }, '×'))),
        h('form', { class: 'inline', onsubmit: (ev) => { ev.preventDefault(); if (add.value.trim()) changeRules(u.access_key, [add.value.trim()], []); } },
          add, h('button', { type: 'submit', class: 'secondary acl-rule-add', 'data-user': u.access_key }, 'Add rule')));
    };
    parts.push(table([{ t: 'User', v: u => u.access_key }, { t: 'Admin', v: u => u.admin ? 'yes' : 'no' },
      { t: 'Rules', v: ruleCell },
      { t: '', v: u => h('button', { class: 'danger', onclick: async () => {
        if (!confirm('Delete user ' + u.access_key + '?')) return;
        try { await api('acl/users/delete', { access_key: u.access_key }); route(); } catch (e) { flash(e.message); }
      } }, 'Delete') }], b.users, { id: 'acl-table-' + b.broker, empty: 'No users stored (a bootstrap admin from the config file is not listed).' }));
  }
  show(...parts);
}

// ---- charts --------------------------------------------------------------
function quantile(deltaBuckets, q) {
  const total = deltaBuckets.length ? deltaBuckets[deltaBuckets.length - 1][1] : 0;
  if (total <= 0) return null;
  const want = q * total;
  let prevLe = 0, prevC = 0;
  for (const [le, c] of deltaBuckets) {
    if (c >= want) {
      if (le === '+Inf') return prevLe;
      const span = c - prevC;
      return prevLe + (span > 0 ? (le - prevLe) * (want - prevC) / span : 0);
    }
    prevLe = le === '+Inf' ? prevLe : le; prevC = c;
  }
  return prevLe;
}

function sumBuckets(brokers, key) {
  const m = new Map();
  for (const b of brokers) for (const [le, c] of ((b.metrics && b.metrics[key]) || [])) m.set(le, (m.get(le) || 0) + c);
  return [...m.entries()].sort((a, b) => (a[0] === '+Inf' ? Infinity : a[0]) - (b[0] === '+Inf' ? Infinity : b[0]));
}

function derive(prev, cur) {
  const dt = (cur.at_ms - prev.at_ms) / 1000;
  if (dt <= 0) return null;
  const sum = (s, k) => s.brokers.reduce((a, b) => a + ((b.metrics && b.metrics[k]) || 0), 0);
  const masters = (s) => s.brokers.filter(b => b.broker_id === 0);
  const rate = (k) => Math.max(0, (sum({ brokers: masters(cur) }, k) - sum({ brokers: masters(prev) }, k)) / dt);
  const delta = (k) => { const a = sumBuckets(prev.brokers, k); const b = sumBuckets(cur.brokers, k); return b.map(([le, c]) => [le, c - ((a.find(x => x[0] === le) || [0, 0])[1])]); };
  const send = delta('send_buckets'), fs = delta('fsync_buckets');
  const topicRates = {};
  for (const b of masters(cur)) {
    const p = masters(prev).find(x => x.broker === b.broker);
    if (!b.metrics || !p || !p.metrics) continue;
    for (const [t, v] of Object.entries(b.metrics.in_by_topic)) { const r = topicRates[t] || (topicRates[t] = { in: 0, out: 0 }); r.in += Math.max(0, (v - (p.metrics.in_by_topic[t] || 0)) / dt); }
    for (const [t, v] of Object.entries(b.metrics.out_by_topic)) { const r = topicRates[t] || (topicRates[t] = { in: 0, out: 0 }); r.out += Math.max(0, (v - (p.metrics.out_by_topic[t] || 0)) / dt); }
  }
  S.topicRates = topicRates;
  const ms = (v) => v === null ? null : v * 1000;
  return {
    t: cur.at_ms, in: rate('in_total'), out: rate('out_total'),
    p50: ms(quantile(send, 0.5)), p99: ms(quantile(send, 0.99)), f50: ms(quantile(fs, 0.5)), f99: ms(quantile(fs, 0.99)),
    repl: Math.max(0, ...cur.brokers.map(b => (b.metrics && b.metrics.replication_lag_bytes) || 0)),
    lag: sum({ brokers: masters(cur) }, 'consumer_lag'),
  };
}

async function poll() {
  try {
    const cur = await api('metrics');
    S.down = cur.brokers.filter(b => b.error);
    if (S.last) { const p = derive(S.last, cur); if (p) { S.hist.push(p); if (S.hist.length > HISTORY) S.hist.shift(); } }
    S.last = cur;
    if (location.hash === '#charts') drawCharts();
  } catch (_) { /* shown by the pages */ }
}

function chart(title, series, unit) {
  const W = 420, H = 160, pad = 34;
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  const el = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const pts = S.hist;
  const vals = series.flatMap(s => pts.map(p => p[s.k]).filter(v => v !== null && v !== undefined));
  const top0 = Math.max(0, ...vals); const max = top0 > 0 ? top0 * 1.1 : 1;
  const t0 = pts.length ? pts[0].t : 0, t1 = pts.length ? pts[pts.length - 1].t : 1;
  const x = (t) => pad + (W - pad - 6) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => H - 18 - (H - 30) * (v / max);
  svg.append(el('line', { x1: pad, y1: H - 18, x2: W - 6, y2: H - 18, stroke: '#c5cbd8' }));
  const top = el('text', { x: 2, y: 12, 'font-size': 10, fill: '#687087' }); top.textContent = max.toPrecision(3) + ' ' + unit; svg.append(top);
  const span = el('text', { x: pad, y: H - 4, 'font-size': 10, fill: '#687087' }); span.textContent = pts.length ? 'last ' + Math.round((t1 - t0) / 1000) + ' s' : 'collecting…'; svg.append(span);
  for (const s of series) {
    const d = pts.filter(p => p[s.k] !== null && p[s.k] !== undefined).map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(p[s.k]).toFixed(1)).join(' ');
    if (d) svg.append(el('path', { d, fill: 'none', stroke: s.c, 'stroke-width': 1.6 }));
  }
  const last = pts.length ? pts[pts.length - 1] : null;
  return h('div', { class: 'card chart' }, h('h3', {}, title), svg,
    h('div', { class: 'legend' }, series.map(s => h('span', { style: 'color:' + s.c + ';margin-right:12px' }, '■ ' + s.n + ': ' + (last && last[s.k] !== null ? Number(last[s.k]).toPrecision(3) + ' ' + unit : '-')))));
}

function drawCharts() {
  const wrap = $('charts');
  if (!wrap) return;
  $('charts-down').replaceChildren(...(S.down || []).map(b => h('div', { class: 'err' }, 'No metrics from ' + b.broker + ' ' + b.broker_id + ' (' + b.address + '): ' + b.error)));
  wrap.replaceChildren(
    chart('Messages per second', [{ k: 'in', n: 'in', c: '#2f6fde' }, { k: 'out', n: 'out', c: '#1e8e4e' }], 'msg/s'),
    chart('Send latency (broker)', [{ k: 'p50', n: 'p50', c: '#2f6fde' }, { k: 'p99', n: 'p99', c: '#c0392b' }], 'ms'),
    chart('fsync latency', [{ k: 'f50', n: 'p50', c: '#2f6fde' }, { k: 'f99', n: 'p99', c: '#c0392b' }], 'ms'),
    chart('Replication lag (worst slave)', [{ k: 'repl', n: 'bytes', c: '#b7791f' }], 'B'),
    chart('Consumer lag (all groups)', [{ k: 'lag', n: 'messages', c: '#8e44ad' }], 'msg'));
}

function pageCharts() {
  show(h('h2', {}, 'Live charts'), h('p', { class: 'empty' }, 'From the brokers\' own /metrics, polled every 2 s while the console is open; history lives in this page only.'),
    h('div', { id: 'charts-down' }), h('div', { id: 'charts', class: 'charts' }));
  drawCharts();
}

// ---- routing -------------------------------------------------------------
async function route() {
  stopTimer();
  const hash = location.hash || '#cluster';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  try {
    if (hash.startsWith('#group/')) await pageGroup(decodeURIComponent(hash.slice(7)));
    else if (hash === '#topics') await pageTopics();
    else if (hash === '#groups') await pageGroups();
    else if (hash === '#messages') await pageMessages();
    else if (hash === '#dlq') await pageDlq();
    else if (hash === '#acl') await pageAcl();
    else if (hash === '#charts') pageCharts();
    else await pageCluster();
    // When the page finished drawing (ms since navigation): the load-time figures use it.
    window.sofamqRenderedAt = performance.now();
  } catch (e) {
    if (e.status !== 401) show(h('h2', {}, 'Error'), h('p', { class: 'err', id: 'page-error' }, e.message));
  }
}

async function start() {
  flash('');
  try {
    S.session = await api('session');
  } catch (e) {
    if (e.status !== 401) show(h('h2', {}, 'Console unavailable'), h('p', { class: 'err', id: 'page-error' }, e.message));
    return;
  }
  if (S.session.acl && !S.session.user) { renderLogin(); return; }
  $('who').replaceChildren(S.session.user ? h('span', {}, S.session.user, h('button', { class: 'secondary', id: 'logout', onclick: async () => { await api('logout', {}); location.reload(); } }, 'Log out')) : h('span', {}, 'ACL off'));
  if (!S.poller) { poll(); S.poller = setInterval(poll, 2000); }
  route();
}

window.addEventListener('hashchange', () => { flash(''); if (S.session) route(); });
start();
