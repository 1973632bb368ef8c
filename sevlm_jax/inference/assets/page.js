(function () {
  var MAX_BYTES = __MAX_UPLOAD_BYTES__, EMOTIONS = __EMOTIONS__;
  var drop = document.getElementById('drop'), input = document.getElementById('file');
  var statusEl = document.getElementById('status'), errorEl = document.getElementById('error');
  var preview = document.getElementById('preview'), result = document.getElementById('result');
  var overlay = document.getElementById('overlay'), choice = document.getElementById('emotion-choice');
  var SVG = overlay.namespaceURI;  // the inline <svg>'s namespace, for creating its children
  var lastFile = null;
  EMOTIONS.forEach(function (name) {
    var o = document.createElement('option'); o.value = name; o.textContent = name; choice.appendChild(o);
  });

  function showError(message) { errorEl.textContent = message; statusEl.textContent = ''; }

  // An <svg> has no .hidden property (it is not an HTMLElement): the attribute is set instead.
  function showOverlay(on) { if (on) { overlay.removeAttribute('hidden'); } else { overlay.setAttribute('hidden', ''); } }

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  // One word's GxG attention map as red squares over the picture, opacity relative to its peak.
  function showAttention(map) {
    overlay.textContent = '';
    var g = map.length, peak = Math.max.apply(null, map.map(function (r) { return Math.max.apply(null, r); }));
    overlay.setAttribute('viewBox', '0 0 ' + g + ' ' + g);
    map.forEach(function (row, y) {
      row.forEach(function (w, x) {
        overlay.appendChild(el('rect', { x: x, y: y, width: 1, height: 1, fill: '#d62728',
                                         'fill-opacity': (0.75 * w / (peak || 1)).toFixed(3) }));
      });
    });
    showOverlay(true);
  }

  function showWords(r) {
    var box = document.getElementById('words');
    box.textContent = ''; showOverlay(false);
    r.words.forEach(function (word, k) {
      var span = document.createElement('span'); span.className = 'word'; span.textContent = word;
      span.tabIndex = 0; span.setAttribute('role', 'button');
      span.addEventListener('click', function () {
        var on = !span.classList.contains('on');
        Array.prototype.forEach.call(box.children, function (s) { s.classList.remove('on'); });
        if (on) { span.classList.add('on'); showAttention(r.attention[k]); } else { showOverlay(false); }
      });
      box.appendChild(span);
    });
  }

  // Valence, arousal and dominance per token as three lines.
  function showVad(r) {
    var svg = document.getElementById('vad-chart'), w = 420, h = 130, left = 34, top = 8, bottom = 22;
    svg.textContent = '';
    if (!r.vad.length) { return; }
    var all = [].concat.apply([0], r.vad), lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    if (hi - lo < 1e-6) { hi = lo + 1; }
    var n = r.vad.length, right = w - 90;
    var sx = function (i) { return left + (n > 1 ? i * (right - left) / (n - 1) : (right - left) / 2); };
    var sy = function (v) { return top + (hi - v) * (h - top - bottom) / (hi - lo); };
    svg.appendChild(el('line', { x1: left, y1: sy(lo), x2: left, y2: sy(hi), stroke: '#999' }));
    [lo, hi].forEach(function (v) {
      var t = el('text', { x: left - 4, y: sy(v) + 3, 'text-anchor': 'end' }); t.textContent = v.toFixed(2); svg.appendChild(t);
    });
    ['valence', 'arousal', 'dominance'].forEach(function (name, d) {
      var color = ['#1f77b4', '#d62728', '#2ca02c'][d];
      var points = r.vad.map(function (v, i) { return sx(i).toFixed(1) + ',' + sy(v[d]).toFixed(1); });
      svg.appendChild(el('polyline', { points: points.join(' '), fill: 'none', stroke: color, 'stroke-width': 2,
                                       'class': 'vad-' + name }));
      var t = el('text', { x: right + 8, y: top + 12 + 14 * d, fill: color }); t.textContent = name; svg.appendChild(t);
    });
    var t = el('text', { x: left, y: h - 6 }); t.textContent = n + ' tokens: ' + r.tokens.join('|').slice(0, 60); svg.appendChild(t);
  }

  function showResult(r) {
    document.getElementById('emotion').textContent = r.emotion || '(no emotion named)';
    document.getElementById('explanation').textContent =
        r.explanation ? 'because ' + r.explanation : '(no explanation)';
    showWords(r); showVad(r);
    var bars = document.getElementById('bars');
    bars.textContent = '';
    r.emotions.map(function (name, i) { return [name, r.probabilities[i]]; })
      .sort(function (a, b) { return b[1] - a[1]; })
      .forEach(function (pair) {
        var row = document.createElement('div'); row.className = 'row';
        var name = document.createElement('span'); name.className = 'name'; name.textContent = pair[0];
        var track = document.createElement('span'); track.className = 'track';
        var fill = document.createElement('div'); fill.className = 'fill';
        fill.style.width = (100 * pair[1]).toFixed(1) + '%';
        var p = document.createElement('span'); p.className = 'p'; p.textContent = (100 * pair[1]).toFixed(1) + '%';
        track.appendChild(fill); row.appendChild(name); row.appendChild(track); row.appendChild(p);
        bars.appendChild(row);
      });
    result.hidden = false;
  }

  // Only the newest request's answer is shown: an older one still in flight (say, the previous
  // image sent again when the emotion choice changed) would otherwise land after it.
  var latestRequest = 0;

  function send(file) {
    var request = ++latestRequest;
    errorEl.textContent = ''; result.hidden = true; showOverlay(false);
    if (!file) { return; }
    lastFile = file;
    if (file.size > MAX_BYTES) {
      showError('This file is ' + (file.size / 1048576).toFixed(1) + ' MB; the limit is ' +
                (MAX_BYTES / 1048576).toFixed(0) + ' MB.');
      return;
    }
    if (preview.src) { URL.revokeObjectURL(preview.src); }
    preview.src = URL.createObjectURL(file); preview.hidden = false;
    statusEl.textContent = 'Looking at ' + file.name + '...';
    var url = '/api/predict' + (choice.value ? '?emotion=' + encodeURIComponent(choice.value) : '');
    fetch(url, { method: 'POST', body: file,
                            headers: { 'Content-Type': file.type || 'application/octet-stream',
                                       'X-Upload-Name': encodeURIComponent(file.name || '') } })
      .then(function (resp) {
        return resp.json().then(function (data) { return { ok: resp.ok, data: data }; });
      })
      .then(function (r) {
        if (request !== latestRequest) { return; }
        if (!r.ok) { showError(r.data.error || 'The server refused the image.'); return; }
        statusEl.textContent = ''; showResult(r.data);
      })
      .catch(function (e) { if (request === latestRequest) { showError('No answer from the server: ' + e); } });
  }

  input.addEventListener('change', function () { send(input.files[0]); });
  choice.addEventListener('change', function () { if (lastFile) { send(lastFile); } });
  drop.addEventListener('dragover', function (e) { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', function () { drop.classList.remove('over'); });
  drop.addEventListener('drop', function (e) {
    e.preventDefault(); drop.classList.remove('over');
    send(e.dataTransfer.files[0]);
  });
})();
