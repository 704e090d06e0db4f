// The playground: chat with any of the tenant's models through the same OpenAI API, streamed, with usage.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let controller = null;

  llmaas.call("/v1/models").then((list) => {
    for (const model of list.data) $("model").add(new Option(model.id, model.id));
    document.body.dataset.modelsLoaded = "true";
  });

  $("stop").addEventListener("click", () => controller && controller.abort());
  $("playground").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("answer").textContent = ""; $("usage").textContent = ""; $("error").textContent = "";
    document.body.dataset.answered = "false";
    const messages = [];
    if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value });
    messages.push({ role: "user", content: $("prompt").value });
    const body = {
      model: $("model").value, messages, stream: true, stream_options: { include_usage: true },
      temperature: Number($("temperature").value), max_completion_tokens: Number($("max-tokens").value),
    };
    controller = new AbortController();
    $("send").disabled = true; $("stop").disabled = false;
    try {
      const response = await llmaas.fetch("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
      if (!response.ok) {
        const failure = await response.json().catch(() => ({}));
        throw new Error((failure.error && failure.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices) $("answer").textContent += choice.delta.content || "";
          if (chunk.usage) {
            const u = chunk.usage;
            $("usage").textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ${u.total_tokens} tokens`;
          }
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") $("error").textContent = error.message;
    } finally {
      $("send").disabled = false; $("stop").disabled = true; controller = null;
      document.body.dataset.answered = "true";
    }
  });
})();
