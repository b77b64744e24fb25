// The dashboard's only script: refresh the live part every 5 s, confirm a discard.
// Plain JavaScript, no build step; the page works without it.
(function () {
  "use strict";
  var PERIOD_MS = 5000;

  function pageUrl() {
    var url = new URL(window.location.href);
    url.searchParams.delete("notice");
    url.searchParams.delete("key");
    return url.toString();
  }

  function refresh() {
    fetch(pageUrl(), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var live = document.getElementById("live");
        var next = fresh.getElementById("live");
        if (live && next) { live.innerHTML = next.innerHTML; }
        var stamp = document.getElementById("refreshed");
        var nextStamp = fresh.getElementById("refreshed");
        if (stamp && nextStamp) { stamp.textContent = nextStamp.textContent; }
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  window.setInterval(refresh, PERIOD_MS);
})();
