// Test chat: stream each new turn over server-sent events into its bubble, as tokens arrive.
(() => {
  function choiceEl(bubble, index) {
    let el = bubble.querySelector(`[data-choice="${index}"]`);
    if (!el) {
      el = document.createElement("div");
      el.className = "text choice";
      el.dataset.choice = index;
      bubble.querySelector(".choices").appendChild(el);
    }
    return el;
  }

  function finish(bubble, source) {
    source.close();
    bubble.classList.remove("streaming");
    bubble.dataset.done = "1";
    const stop = bubble.querySelector("[data-stop]");
    if (stop) stop.remove();
  }

  function start(bubble) {
    if (bubble.dataset.started) return;
    bubble.dataset.started = "1";
    const source = new EventSource(bubble.dataset.streamUrl);
    // Each unnamed event is one chunk in the endpoint's own shape (chat delta, chat message
    // or completion text), passed through by the relay.
    source.onmessage = (e) => {
      const chunk = JSON.parse(e.data);
      for (const c of chunk.choices || []) {
        const text = (c.delta && c.delta.content) || (c.message && c.message.content) || c.text;
        if (text) choiceEl(bubble, c.index || 0).textContent += text;  // text, never HTML
      }
    };
    source.addEventListener("stats", (e) => {
      bubble.querySelector("[data-stats]").innerHTML = JSON.parse(e.data).html;
    });
    source.addEventListener("done", () => finish(bubble, source));
    source.onerror = () => {
      if (bubble.dataset.done) return;
      finish(bubble, source);
      bubble.querySelector("[data-stats]").innerHTML =
        '<p class="error-text" role="alert">The connection to the console was lost; the answer may be incomplete.</p>';
    };
    const stop = bubble.querySelector("[data-stop]");
    if (stop) stop.addEventListener("click", () => {
      // Closing the stream makes the server close the upstream request: generation stops.
      finish(bubble, source);
      bubble.querySelector("[data-stats]").innerHTML = '<p class="muted">Stopped.</p>';
    });
  }

  document.addEventListener("htmx:load", (e) => {
    const root = e.detail.elt;
    const bubbles = root.matches && root.matches("[data-stream-url]") ? [root] : [];
    root.querySelectorAll && bubbles.push(...root.querySelectorAll("[data-stream-url]"));
    bubbles.forEach(start);
  });

  // After a message is accepted, clear the box for the next one (parameters stay).
  document.addEventListener("htmx:afterRequest", (e) => {
    const form = e.detail.elt;
    if (form.id === "composer" && e.detail.successful && e.detail.xhr.status === 200) {
      const box = form.querySelector("#id_message");
      if (box) box.value = "";
    }
  });
})();
