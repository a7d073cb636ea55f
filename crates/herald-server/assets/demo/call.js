// Video call: WebRTC between two tabs, signalled over Herald. Each page joins the room's
// channel with a random peer id; when presence shows another peer, the one whose id sorts first
// makes the offer. Messages name their recipient, so a third tab is ignored by a busy pair.
import { connect, el, randomId, roomFromUrl, savedNick } from './common.js';

const room = roomFromUrl();
const channel = `demo-signal:call:${room}`;
const me = randomId(8);
const nick = savedNick();
const state = document.querySelector('[data-test="call-state"]');
const remoteVideo = document.querySelector('[data-test="remote-video"]');
const present = new Map(); // client id → {peer, nick}
let herald = null;
let subscription = null;
let local = null;
let connection = null;
let partner = null;

function setState(text) {
  state.textContent = text;
}

function renderMembers() {
  const list = document.getElementById('room-members');
  const entries = [...present.values()];
  list.replaceChildren(...(entries.length ? entries.map((entry) => el('li', {}, entry.peer === me ? `${entry.nick} (you)` : entry.nick)) : [el('li', { class: 'empty' }, 'nobody yet')]));
}

function send(message) {
  return herald.publish(channel, { from: me, to: partner, ...message }).catch((error) => console.warn('signal:', error.message));
}

/** A peer connection to `peer`, sending our camera and showing theirs. */
function call(peer) {
  partner = peer;
  connection = new RTCPeerConnection({ iceServers: [] }); // on one network host candidates are enough
  for (const track of local.getTracks()) connection.addTrack(track, local);
  connection.onicecandidate = ({ candidate }) => candidate && send({ type: 'candidate', candidate: candidate.toJSON() });
  connection.ontrack = ({ streams }) => {
    remoteVideo.srcObject = streams[0];
  };
  connection.onconnectionstatechange = () => {
    setState(connection.connectionState);
    if (['failed', 'closed'].includes(connection.connectionState)) hangUp();
  };
  const name = [...present.values()].find((entry) => entry.peer === peer)?.nick ?? peer;
  document.getElementById('remote-name').textContent = name;
  setState('calling');
}

function hangUp() {
  connection?.close();
  connection = null;
  partner = null;
  remoteVideo.srcObject = null;
  document.getElementById('remote-name').textContent = 'waiting for someone';
  setState('waiting');
  maybeCall();
}

/** With no call yet, the first peer by id calls the next one present. */
async function maybeCall() {
  if (connection) return;
  const others = [...present.values()].map((entry) => entry.peer).filter((peer) => peer && peer !== me).sort();
  if (others.length === 0) return setState('waiting');
  if (me > others[0]) return setState('waiting for an offer');
  call(others[0]);
  const offer = await connection.createOffer();
  await connection.setLocalDescription(offer);
  send({ type: 'offer', sdp: offer.sdp });
}

async function signal({ data }) {
  if (!data || data.to !== me) return;
  if (data.type === 'offer' && !connection) {
    call(data.from);
    await connection.setRemoteDescription({ type: 'offer', sdp: data.sdp });
    const answer = await connection.createAnswer();
    await connection.setLocalDescription(answer);
    send({ type: 'answer', sdp: answer.sdp });
  } else if (data.from !== partner) {
    return; // from someone we are not in a call with
  } else if (data.type === 'answer') {
    await connection.setRemoteDescription({ type: 'answer', sdp: data.sdp });
  } else if (data.type === 'candidate') {
    await connection.addIceCandidate(data.candidate).catch((error) => console.warn('candidate:', error.message));
  } else if (data.type === 'bye') {
    hangUp();
  }
}

document.querySelector('[data-test="join"]').addEventListener('click', async (event) => {
  event.target.disabled = true;
  try {
    local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (error) {
    setState(`no camera: ${error.message}`);
    event.target.disabled = false;
    return;
  }
  document.getElementById('local-video').srcObject = local;
  herald = connect({ peer: me, nick });
  subscription = herald.subscribe(channel);
  subscription.on('publication', (publication) => signal(publication).catch((error) => console.warn('signal:', error)));
  const track = (entry) => present.set(entry.client, { peer: entry.info?.peer, nick: String(entry.info?.nick ?? entry.user ?? 'anonymous') });
  subscription.on('subscribed', async () => {
    const { clients } = await subscription.presence();
    present.clear();
    clients.forEach(track);
    renderMembers();
    maybeCall();
  });
  subscription.on('join', (entry) => {
    track(entry);
    renderMembers();
    maybeCall();
  });
  subscription.on('leave', (entry) => {
    const gone = present.get(entry.client)?.peer;
    present.delete(entry.client);
    renderMembers();
    if (gone && gone === partner) hangUp();
  });
  setState('waiting');
});

addEventListener('pagehide', () => {
  if (partner) send({ type: 'bye' });
});
