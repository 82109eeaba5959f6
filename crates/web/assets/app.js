// assim web: times in the viewer's zone, instant table filtering, and live updates from the
// CMA's event stream (the page re-fetches its <main> from the server). The pages work without it.
'use strict';
(function () {
  var fmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  function localTimes(root) {
    root.querySelectorAll('time[datetime]').forEach(function (t) {
      var d = new Date(t.getAttribute('datetime'));
      if (!isNaN(d.getTime())) { t.textContent = fmt.format(d); }
    });
  }

  function filterTables(root) {
    root.querySelectorAll('input[data-filter-for]').forEach(function (input) {
      var apply = function () {
        var table = document.getElementById(input.dataset.filterFor);
        if (!table) { return; }
        var q = input.value.trim().toLowerCase();
        table.querySelectorAll('tbody tr').forEach(function (tr) {
          tr.hidden = q !== '' && tr.textContent.toLowerCase().indexOf(q) < 0;
        });
      };
      input.addEventListener('input', apply);
    });
  }

  function live(main) {
    var status = document.getElementById('live');
    var show = function (on, text) {
      if (status) { status.textContent = text; status.className = 'live ' + (on ? 'on' : 'off'); }
    };
    if (!window.EventSource || !window.fetch) { return; }
    var url = '/api/v1/events/stream';
    if (main.dataset.filter) { url += '?filter=' + encodeURIComponent(main.dataset.filter); }
    var source = null;
    var timer = null;
    var lost = false;
    var refresh = function () {
      if (timer) { return; }
      timer = setTimeout(function () {
        timer = null;
        fetch(location.href, { headers: { 'X-Assim-Partial': '1' }, cache: 'no-store' })
          .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
          .then(function (html) {
            var focused = document.activeElement && document.activeElement.id;
            var typed = focused && document.getElementById(focused).value;
            main.innerHTML = html;
            localTimes(main);
            filterTables(main);
            if (focused && document.getElementById(focused)) {
              var el = document.getElementById(focused);
              if (typed !== undefined && typed !== null) { el.value = typed; el.dispatchEvent(new Event('input')); }
              el.focus();
            }
            main.dataset.updated = String(Date.now());
            show(true, 'live');
          })
          .catch(function () { show(false, 'update failed; retrying on the next event'); });
      }, 250);
    };
    var open = function () {
      source = new EventSource(url);
      (main.dataset.kinds || '').split(' ').forEach(function (k) {
        if (k) { source.addEventListener(k, refresh); }
      });
      source.onopen = function () {
        show(true, 'live');
        if (lost) { lost = false; refresh(); }
      };
      source.onerror = function () { lost = true; show(false, 'reconnecting…'); };
    };
    open();
    // A page left for another (or kept in the back-forward cache) lets its stream go, so
    // the browser's few connections per server are not held by pages nobody sees; coming
    // back reopens it and re-renders what changed meanwhile.
    window.addEventListener('pagehide', function () {
      if (source) { source.close(); source = null; }
    });
    window.addEventListener('pageshow', function (e) {
      if (e.persisted && !source) { lost = true; open(); }
    });
  }

  function start() {
    localTimes(document);
    filterTables(document);
    var main = document.querySelector('main[data-live]');
    if (main) { live(main); }
    document.addEventListener('keydown', function (e) {
      if (e.key !== '/' || e.ctrlKey || e.metaKey || e.altKey) { return; }
      var tag = document.activeElement && document.activeElement.tagName;
      if (tag === 'INPUT' || tag === 'TEXTAREA') { return; }
      var search = document.querySelector('input[type=search]');
      if (search) { e.preventDefault(); search.focus(); }
    });
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
