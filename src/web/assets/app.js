// The page's only script. Everything works without it; it adds a copy button to
// attributions and keeps the peers page current.
"use strict";

function announce(text) {
  const status = document.getElementById("announce");
  if (status) {
    status.textContent = "";
    window.setTimeout(() => { status.textContent = text; }, 50);
  }
}

// Plain HTTP on a school network is not a secure context, where the Clipboard API is
// missing: fall back to selecting the text and the copy command.
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "absolute";
  area.style.left = "-999rem";
  document.body.appendChild(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) {
    throw new Error("copy refused");
  }
}

function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) {
      continue;
    }
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await copyText(source.textContent.trim());
        announce("Attribution copied.");
      } catch (error) {
        announce("Could not copy; select the text and copy it yourself.");
      }
    });
  }
}

// The peers page reloads its figures every few seconds, until paused.
function setUpLiveRegion() {
  const live = document.getElementById("live");
  const toggle = document.getElementById("live-toggle");
  if (!live || !toggle) {
    return;
  }
  const every = Number(live.dataset.refreshSeconds || "10") * 1000;
  let timer = null;
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("live");
        if (fresh) {
          live.innerHTML = fresh.innerHTML;
        }
      }
    } catch (error) {
      // The node may be restarting; the next round tries again.
    }
  }
  function start() {
    timer = window.setInterval(refresh, every);
    toggle.textContent = "Pause updates";
  }
  function stop() {
    window.clearInterval(timer);
    timer = null;
    toggle.textContent = "Resume updates";
  }
  toggle.hidden = false;
  toggle.addEventListener("click", () => (timer ? stop() : start()));
  start();
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpLiveRegion();
});
