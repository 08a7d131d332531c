// The live page: camera frames to `WebSocket /v1/live`, swapped frames drawn as they come back,
// with frames per second, latency and dropped frames. At most two frames are in flight, so a slow
// server slows the camera's sending instead of building a queue.
import { apiJson, apiKey, controls, fileToBase64, openapi, schemaNamed, showError, values } from "./common.js";

const $ = (id) => document.getElementById(id);
const IN_FLIGHT = 2;

class LiveSession {
  constructor(options) {
    this.options = options;
    this.sent = new Map(); // frame number -> when it was sent
    this.number = 0; // frames sent
    this.answered = -1; // highest frame number answered (the server answers in order)
    this.delivered = [];
    this.latencies = [];
    this.count = 0;
    this.header = null;
    this.lastDetail = "";
    this.capture = document.createElement("canvas");
  }

  async start() {
    const files = [...$("sources").files];
    if (!files.length) throw new Error("sources: choose one or more photos of the identity to put in");
    const sources = await Promise.all(files.map(fileToBase64));
    this.camera = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
    $("camera").srcObject = this.camera;
    await $("camera").play();
    const opening = { type: "start", sources, options: values(this.options) };
    const every = $("detect-every").value;
    if (every) opening.detect_every = Number(every);
    if (apiKey()) opening.api_key = apiKey();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}/v1/live`);
    this.socket.binaryType = "blob";
    this.socket.onopen = () => this.socket.send(JSON.stringify(opening));
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => this.closed(event);
    $("live-state").textContent = "Opening the session…";
  }

  receive(data) {
    if (typeof data === "string") {
      const message = JSON.parse(data);
      if (message.type === "ready") {
        $("live-state").textContent = `Running: faces detected every ${message.detect_every} frames.`;
        this.timer = setInterval(() => this.send(), 1000 / Math.min(30, 0.9 * message.max_fps));
      } else if (message.type === "frame") {
        this.header = message;
      } else if (message.type === "error") {
        if (message.frame !== undefined) this.answered = Math.max(this.answered, message.frame);
        else this.endDetail = message.detail; // the session's end: the full reason, before the close
        showError(message.detail);
      }
      return;
    }
    const header = this.header;
    this.header = null;
    if (!header) return;
    this.answered = Math.max(this.answered, header.frame);
    const now = performance.now();
    this.latencies.push(now - this.sent.get(header.frame));
    this.latencies = this.latencies.slice(-30);
    for (const number of this.sent.keys()) if (number <= header.frame) this.sent.delete(number);
    this.delivered.push(now);
    this.count += 1;
    this.showStats(header);
    createImageBitmap(data).then((bitmap) => {
      const canvas = $("swapped");
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
    });
  }

  showStats(header) {
    const now = performance.now();
    this.delivered = this.delivered.filter((at) => now - at <= 2000);
    const sorted = [...this.latencies].sort((a, b) => a - b);
    $("fps").textContent = (this.delivered.length / 2).toFixed(1);
    $("latency").textContent = Math.round(sorted[Math.floor(sorted.length / 2)]);
    $("dropped").textContent = header.dropped;
    $("delivered").textContent = this.count;
  }

  send() {
    const video = $("camera");
    const open = this.socket && this.socket.readyState === WebSocket.OPEN;
    if (!open || this.busy || this.number - this.answered - 1 >= IN_FLIGHT || !video.videoWidth) return;
    this.busy = true;
    this.capture.width = video.videoWidth;
    this.capture.height = video.videoHeight;
    this.capture.getContext("2d").drawImage(video, 0, 0);
    this.capture.toBlob(
      (blob) => {
        this.busy = false;
        if (!blob || this.socket.readyState !== WebSocket.OPEN) return;
        this.sent.set(this.number, performance.now());
        this.number += 1;
        this.socket.send(blob);
      },
      "image/jpeg",
      0.85,
    );
  }

  stop() {
    clearInterval(this.timer);
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "stop" }));
    }
    this.release();
  }

  release() {
    clearInterval(this.timer);
    for (const track of this.camera ? this.camera.getTracks() : []) track.stop();
    $("camera").srcObject = null;
  }

  closed(event) {
    this.release();
    $("live-state").textContent = "Stopped.";
    if (event.code !== 1000) {
      const why = CLOSE_WORDS[event.code] || `it closed with code ${event.code}`;
      // The close reason is cut at 123 bytes; the error message before it has the whole of it.
      const detail = this.endDetail || event.reason;
      showError(`The live session ended: ${why}${detail ? `. ${detail}` : ""}`);
    }
    stopped();
  }
}

let session = null;

// What each close code of /v1/live (orchestrator.live.CLOSE_*) means, in words.
const CLOSE_WORDS = {
  1006: "the connection to the service was lost",
  1009: "a message was larger than the service takes",
  1011: "the service failed",
  1013: "the service cannot take it now; try again later",
  4400: "the service refused the request",
  4401: "the API key is missing or wrong",
  4403: "this page's origin is not allowed",
  4408: "nothing was sent or read for too long",
  4429: "frames came faster than the service takes",
};

function stopped() {
  session = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

async function main() {
  let options;
  try {
    const doc = await openapi();
    const schema = schemaNamed(doc, "SwapOptions");
    options = controls($("live-options"), schema.props, schema.required, Object.keys(schema.props));
  } catch (error) {
    showError(error.message);
    return;
  }
  $("live-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    $("start").disabled = true;
    try {
      const info = await apiJson("/v1/live"); // asks for the key first, if the service has one
      $("detect-every").placeholder = info.detect_every;
      session = new LiveSession(options);
      await session.start();
      $("stop").disabled = false;
    } catch (error) {
      showError(error.message);
      if (session) session.release();
      stopped();
    }
  });
  $("stop").addEventListener("click", () => session && session.stop());
  document.body.dataset.ready = "yes"; // the form is built (tests wait for this)
}

main();
