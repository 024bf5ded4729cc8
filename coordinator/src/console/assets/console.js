// Shoal's console: progressive enhancement of server-rendered pages. Without this
// script every page works (reload to see changes); with it, pages stay live through
// server-sent events, keep focus and open <details> across updates, and tell screen
// readers when a cluster changes state.
'use strict';

(function () {
  const announcer = document.getElementById('announce');

  function announce(message) {
    if (!announcer) return;
    // A change of text in a role=status region is read out; clear first so the same
    // message twice is read twice.
    announcer.textContent = '';
    window.setTimeout(function () { announcer.textContent = message; }, 50);
  }

  // Cluster states shown in a region: name -> state.
  function statesIn(root) {
    const out = new Map();
    root.querySelectorAll('[data-name][data-state]').forEach(function (el) {
      out.set(el.dataset.name, el.dataset.state);
    });
    return out;
  }

  // Replaces a region's HTML, keeping what the user was doing in it: the focused
  // element (by id), open <details> (by id) and sideways scroll positions (by id).
  function swap(region, html) {
    const active = document.activeElement;
    const focusId = active && region.contains(active) ? active.id : '';
    const open = new Set();
    region.querySelectorAll('details[id]').forEach(function (d) {
      if (d.open) open.add(d.id);
    });
    const scrolled = new Map();
    region.querySelectorAll('[id]').forEach(function (el) {
      if (el.scrollLeft) scrolled.set(el.id, el.scrollLeft);
    });
    region.innerHTML = html;
    region.querySelectorAll('details[id]').forEach(function (d) {
      if (open.has(d.id)) d.open = true;
    });
    scrolled.forEach(function (left, id) {
      const el = document.getElementById(id);
      if (el) el.scrollLeft = left;
    });
    if (focusId) {
      const again = document.getElementById(focusId);
      if (again) again.focus();
    }
  }

  // What each region was last given, so an update that changes nothing in it (the
  // first one after every reconnect) leaves it alone.
  const given = new Map();

  function update(root, data) {
    const before = statesIn(root);
    Object.keys(data).forEach(function (key) {
      const region = root.querySelector('[data-live="' + key + '"]');
      if (region && given.get(region) !== data[key]) {
        swap(region, data[key]);
        given.set(region, data[key]);
      }
    });
    const after = statesIn(root);
    const changes = [];
    after.forEach(function (state, name) {
      const was = before.get(name);
      if (was && was !== state) changes.push(name + ' is now ' + state);
    });
    if (changes.length) announce(changes.join('. ') + '.');
  }

  function live(root) {
    const status = document.querySelector('[data-live-status]');
    const setStatus = function (text, on) {
      if (!status) return;
      status.textContent = text;
      status.classList.toggle('on', on);
    };
    let source = null;

    function close() {
      if (source) { source.close(); source = null; }
    }

    function open() {
      if (source || !window.EventSource) return;
      source = new EventSource(root.dataset.liveSrc);
      source.addEventListener('open', function () {
        setStatus('Live: this page updates as things change.', true);
      });
      source.addEventListener('update', function (ev) {
        let data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        update(root, data);
      });
      source.addEventListener('session-ended', function () {
        close();
        window.location.assign('/console/login');
      });
      source.addEventListener('error', function () {
        if (!source || source.readyState !== EventSource.CLOSED) {
          setStatus('Reconnecting…', false);
          return;
        }
        // Closed for good: a refused stream (no session) or a stopped coordinator.
        close();
        fetch('/console/session', { credentials: 'same-origin' }).then(function (r) {
          if (r.status === 401) {
            window.location.assign('/console/login');
          } else {
            setStatus('Disconnected; retrying…', false);
            window.setTimeout(open, 5000);
          }
        }, function () {
          setStatus('The coordinator does not answer; retrying…', false);
          window.setTimeout(open, 5000);
        });
      });
    }

    // A tab in the background holds no connection; it catches up when shown.
    document.addEventListener('visibilitychange', function () {
      if (document.hidden) {
        close();
        setStatus('Paused while this tab is hidden.', false);
      } else {
        open();
      }
    });
    if (!document.hidden) open();
  }

  document.querySelectorAll('[data-live-src]').forEach(live);

  // An error summary after a refused form gets the focus, so it is read first.
  const focus = document.querySelector('[data-focus]');
  if (focus) focus.focus();

  // Choosing a blueprint file chooses "a blueprint file".
  const file = document.getElementById('blueprint_file');
  const upload = document.getElementById('blueprint-upload');
  if (file && upload) {
    file.addEventListener('change', function () {
      if (file.files && file.files.length) upload.checked = true;
    });
  }
})();
