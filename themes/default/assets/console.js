// Progressive help for console pages; every page works without it.
// A payment waiting for its buyer reloads once Alipay has moved it on, so the cashier's screen
// follows the buyer. It asks the engine every few seconds, for ten minutes at most.
(function () {
  "use strict";
  var live = document.querySelector("[data-live-status]");
  if (!live || !window.fetch) {
    return;
  }
  var url = live.getAttribute("data-live-status");
  var shown = live.getAttribute("data-status");
  var left = 200;
  function ask() {
    left -= 1;
    if (left < 0) {
      return;
    }
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (answer) {
        return answer.ok ? answer.json() : null;
      })
      .then(function (payment) {
        if (payment && payment.status && payment.status !== shown) {
          window.location.reload();
        } else {
          window.setTimeout(ask, 3000);
        }
      })
      .catch(function () {
        window.setTimeout(ask, 3000);
      });
  }
  window.setTimeout(ask, 3000);
})();
