(function () {
  var controls = Array.prototype.slice.call(document.querySelectorAll('[data-filter]'));
  var items = Array.prototype.slice.call(document.querySelectorAll('#gallery .item'));
  function apply() {
    var shown = 0;
    items.forEach(function (el) {
      var keep = controls.every(function (c) {
        return c.value === 'all' || el.dataset[c.dataset.filter] === c.value;
      });
      el.hidden = !keep;
      if (keep) { shown += 1; }
    });
    document.getElementById('shown').textContent = String(shown);
  }
  controls.forEach(function (c) { c.addEventListener('change', apply); });
  apply();

  // A clicked word draws its attention map (uint8 per patch, base64 in the card's data-attn)
  // as red squares over the thumbnail; a second click, or another word, clears it.
  function drawWord(card, word) {
    var svg = card.querySelector('svg.attn'), on = !word.classList.contains('on');
    Array.prototype.forEach.call(card.querySelectorAll('.w.on'), function (w) { w.classList.remove('on'); });
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    if (!on) { svg.setAttribute('hidden', ''); return; }
    var g = Number(card.dataset.grid), bytes = atob(card.dataset.attn), k = Number(word.dataset.k);
    for (var p = 0; p < g * g; p++) {
      var r = document.createElementNS(svg.namespaceURI, 'rect');
      r.setAttribute('x', p % g); r.setAttribute('y', Math.floor(p / g));
      r.setAttribute('width', 1); r.setAttribute('height', 1); r.setAttribute('fill', '#d62728');
      r.setAttribute('fill-opacity', (0.75 * bytes.charCodeAt(k * g * g + p) / 255).toFixed(3));
      svg.appendChild(r);
    }
    word.classList.add('on'); svg.removeAttribute('hidden');
  }
  document.addEventListener('click', function (e) {
    var word = e.target.closest ? e.target.closest('.w') : null;
    if (word) { drawWord(word.closest('.item'), word); }
  });
})();
