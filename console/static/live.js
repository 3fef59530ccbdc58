// Live refresh of the overview's counts over Server-Sent Events. The
// console works without it: this only saves a reload.
(function () {
  "use strict";
  if (!window.EventSource || !document.getElementById("counts")) return;
  var es = new EventSource("/events");
  es.addEventListener("counts", function (ev) {
    var c = JSON.parse(ev.data);
    Object.keys(c).forEach(function (k) {
      var el = document.getElementById("count-" + k);
      if (el) el.textContent = String(c[k]);
    });
    document.documentElement.setAttribute("data-live", "on");
  });
})();
