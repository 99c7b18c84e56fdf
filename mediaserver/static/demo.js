// mediaserver demo: microphone over WebRTC through signal/1 (docs/signaling.md), no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let socket = null;
let peer = null;
let microphone = null;
const turns = new Map(); // turn_id -> element

function peerId() {
  let id = localStorage.getItem("mediaserver-peer");
  if (!id) {
    id = "web-" + crypto.getRandomValues(new Uint32Array(2)).join("");
    localStorage.setItem("mediaserver-peer", id);
  }
  return id;
}

function status(text) {
  $("status").textContent = text;
}

function line(turnId, role) {
  let el = turns.get(turnId);
  if (!el) {
    el = document.createElement("div");
    el.className = "turn " + role;
    el.dataset.turn = turnId;
    $("log").appendChild(el);
    turns.set(turnId, el);
  }
  return el;
}

function note(text) {
  const el = document.createElement("div");
  el.className = "turn system";
  el.textContent = text;
  $("log").appendChild(el);
}

function connected(on) {
  $("call").disabled = on;
  $("hangup").disabled = !on;
  $("text").disabled = !on;
  $("send").disabled = !on;
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

async function startMedia() {
  // ?raw=1 turns the browser's voice processing off (tests feed a file as the microphone).
  const raw = params.get("raw") === "1";
  microphone = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: !raw, noiseSuppression: !raw, autoGainControl: !raw },
  });
  peer = new RTCPeerConnection({ iceServers: [] });
  microphone.getTracks().forEach((track) => peer.addTrack(track, microphone));
  peer.ontrack = (event) => {
    $("bot").srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  peer.onicecandidate = (event) => {
    const c = event.candidate;
    if (c) send({ type: "candidate", candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
  };
  peer.onconnectionstatechange = () => status("Media: " + peer.connectionState);
  await peer.setLocalDescription(await peer.createOffer());
  send({ type: "offer", sdp: peer.localDescription.sdp });
}

function onEvent(event) {
  switch (event.type) {
    case "session":
      status("In call " + event.call_id + " with " + event.agent.name);
      connected(true);
      startMedia().catch((error) => note("Microphone or WebRTC failed: " + error));
      break;
    case "answer":
      peer.setRemoteDescription({ type: "answer", sdp: event.sdp });
      break;
    case "transcript": {
      const el = line(event.turn_id, "user");
      el.textContent = event.text;
      el.classList.toggle("interim", !event.final);
      break;
    }
    case "response.delta":
      line(event.turn_id, "assistant").textContent += event.text;
      break;
    case "response":
      line(event.turn_id, "assistant").textContent = event.content;
      break;
    case "interrupted": {
      const el = line(event.turn_id, "assistant");
      el.textContent = event.spoken;
      el.classList.add("interrupted");
      break;
    }
    case "speech":
      status(event.state === "started" ? "Listening…" : "Thinking…");
      break;
    case "error":
      note("Error " + event.code + ": " + event.message);
      break;
    case "ended":
      note("Call ended: " + event.reason);
      break;
  }
}

function hangUp() {
  send({ type: "bye" });
}

function cleanUp(reason) {
  if (peer) peer.close();
  if (microphone) microphone.getTracks().forEach((track) => track.stop());
  peer = microphone = socket = null;
  connected(false);
  status(reason);
}

$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  turns.clear();
  $("log").replaceChildren();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const agent = $("agent").value.trim();
  const query = agent ? "?agent=" + encodeURIComponent(agent) : "";
  const key = encodeURIComponent($("key").value.trim());
  socket = new WebSocket(`${scheme}//${location.host}/signal/${peerId()}/${key}${query}`);
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = (close) => cleanUp(`Disconnected (${close.code} ${close.reason || ""})`);
  status("Connecting…");
});

$("hangup").addEventListener("click", hangUp);

$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text) send({ type: "message", message: text });
  $("text").value = "";
});

if (params.get("key")) $("key").value = params.get("key");
