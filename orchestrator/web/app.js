// The swap page: a job from photos and a target, followed by server-sent events, its result shown
// (before/after for images, a player for videos) and downloadable; the job list with cancel and delete.
import {
  api,
  apiJson,
  controls,
  isFile,
  openapi,
  readEvents,
  requestBody,
  showError,
  values,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const targets = new Map(); // job id -> object URL of the target image picked on this page
let resultUrl = null;
let followed = null;
let picked = null; // the face id picked among the target's faces, or null

async function buildForm() {
  const doc = await openapi();
  const body = requestBody(doc, "/v1/jobs", "post");
  // Options the synchronous image swap also takes apply to every target; the rest only to videos.
  const imageOptions = new Set(Object.keys(requestBody(doc, "/v1/swap", "post").props));
  const names = Object.keys(body.props);
  const files = names.filter((name) => isFile(body.props[name]));
  const options = names.filter((name) => !files.includes(name) && imageOptions.has(name));
  const video = names.filter((name) => !files.includes(name) && !imageOptions.has(name));
  const made = {
    files: controls($("media"), body.props, body.required, files),
    options: controls($("options"), body.props, body.required, options),
    video: controls($("video-options"), body.props, body.required, video),
  };
  const target = made.files.find((control) => control.name === "target");
  if (target) {
    target.input.addEventListener("change", () => {
      const file = target.input.files[0];
      $("video-details").open = Boolean(file && file.type.startsWith("video/"));
    });
  }
  return made;
}

function formData(made) {
  const data = new FormData();
  for (const control of made.files) for (const file of control.read()) data.append(control.name, file);
  const chosen = values([...made.options, ...made.video]);
  if (picked) {
    const sources = made.files.find((control) => control.name === "source")?.read() || [];
    chosen.map = sources.map((file) => `${picked}=${file.name}`);
  }
  for (const [name, value] of Object.entries(chosen)) {
    for (const item of Array.isArray(value) ? value : [value]) data.append(name, String(item));
  }
  return data;
}

function describe(job) {
  const parts = [job.state];
  if (job.frames_total > 1) parts.push(`${job.frames_done} / ${job.frames_total} frames`);
  if (job.frames_total > 1 && job.frames_per_second) parts.push(`${job.frames_per_second.toFixed(1)} frames/s`);
  if (job.state === "running" && job.seconds_left !== null && job.seconds_left !== undefined) {
    parts.push(`${Math.ceil(job.seconds_left)} s left`);
  }
  if (job.error) parts.push(job.error);
  return parts.join(" · ");
}

function render(job) {
  $("progress-section").hidden = false;
  $("progress").value = job.progress;
  $("progress-text").textContent = describe(job);
}

async function follow(job) {
  followed = job.id;
  $("result-section").hidden = true;
  render(job);
  let last = job;
  await readEvents(`/v1/jobs/${job.id}/events`, (type, data) => {
    if (type === "gone") {
      showError(data.detail);
      return;
    }
    last = data;
    if (followed === job.id) render(data);
  });
  await refreshJobs();
  if (followed !== job.id) return;
  if (last.state === "succeeded") await showResult(last);
  else if (last.state === "failed") showError(last.error);
}

async function showResult(job) {
  const response = await api(job.result_url);
  const blob = await response.blob();
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  const name = /filename="?([^";]+)"?/.exec(response.headers.get("content-disposition") || "");
  $("download").href = resultUrl;
  $("download").download = name ? name[1] : `swapped-${job.id.slice(0, 8)}`;
  const before = targets.get(job.id);
  const image = job.kind === "image";
  $("compare").hidden = $("compare-control").hidden = !(image && before);
  $("result-image").hidden = !(image && !before);
  $("result-video").hidden = image;
  if (image && before) {
    $("before").src = before;
    $("after").src = resultUrl;
  } else if (image) {
    $("result-image").src = resultUrl;
  } else {
    $("result-video").src = resultUrl;
  }
  $("result-section").hidden = false;
}

function button(text, label, action) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", async () => {
    showError("");
    try {
      await action();
    } catch (error) {
      showError(error.message);
    }
  });
  return element;
}

async function refreshJobs() {
  const list = await apiJson("/v1/jobs?limit=50");
  const rows = list.jobs.map((job) => {
    const short = job.id.slice(0, 8);
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    const cells = [short, job.kind, job.error ? `${job.state}: ${job.error}` : job.state, `${Math.round(job.progress * 100)} %`];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    const active = job.state === "queued" || job.state === "running";
    if (active) {
      actions.append(button("Follow", `Follow job ${short}`, () => follow(job)));
      actions.append(button("Cancel", `Cancel job ${short}`, async () => {
        await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
        await refreshJobs();
      }));
    } else {
      if (job.state === "succeeded") {
        actions.append(button("Show", `Show the result of job ${short}`, () => showResult(job)));
      }
      actions.append(button("Delete", `Delete job ${short}`, async () => {
        await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
        targets.delete(job.id);
        await refreshJobs();
      }));
    }
    row.append(actions);
    return row;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("no-jobs").hidden = rows.length > 0;
}

// The target's faces from POST /v1/faces as thumbnails; the one clicked is the person swapped (a map
// of its face id to every source photo).
async function findFaces(made) {
  const target = made.files.find((control) => control.name === "target")?.read()[0];
  if (!target) throw new Error("Choose a target first.");
  const data = new FormData();
  data.append("target", target);
  const found = await apiJson("/v1/faces", { method: "POST", body: data });
  picked = null;
  const buttons = found.faces.map((face, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-pressed", "false");
    const image = document.createElement("img");
    image.src = face.thumbnail;
    image.alt = `Face ${index + 1} of ${found.faces.length}, from the left`;
    button.append(image);
    button.addEventListener("click", () => {
      picked = picked === face.id ? null : face.id;
      for (const other of buttons) other.setAttribute("aria-pressed", String(other === button && picked !== null));
    });
    return button;
  });
  $("faces").replaceChildren(...buttons);
  if (!buttons.length) $("faces").textContent = "No face found in the target.";
}

async function main() {
  let made;
  try {
    made = await buildForm();
  } catch (error) {
    showError(error.message);
    return;
  }
  $("split").addEventListener("input", (event) => {
    $("compare").style.setProperty("--split", `${event.target.value}%`);
  });
  $("refresh").addEventListener("click", () => refreshJobs().catch((error) => showError(error.message)));
  $("find-faces").addEventListener("click", () => {
    showError("");
    findFaces(made).catch((error) => showError(error.message));
  });
  made.files.find((control) => control.name === "target")?.input.addEventListener("change", () => {
    picked = null;
    $("faces").replaceChildren();
  });
  $("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    $("submit").disabled = true;
    let job;
    try {
      job = await apiJson("/v1/jobs", { method: "POST", body: formData(made) });
    } catch (error) {
      showError(error.message);
      return;
    } finally {
      $("submit").disabled = false;
    }
    const target = made.files.find((control) => control.name === "target")?.read()[0];
    if (target && target.type.startsWith("image/")) targets.set(job.id, URL.createObjectURL(target));
    follow(job).catch((error) => showError(error.message));
    refreshJobs().catch((error) => showError(error.message));
  });
  document.body.dataset.ready = "yes"; // the form is built (tests wait for this)
  try {
    await refreshJobs();
  } catch (error) {
    showError(error.message);
  }
  setInterval(() => {
    if (document.visibilityState === "visible") refreshJobs().catch(() => {});
  }, 5000);
}

main();
