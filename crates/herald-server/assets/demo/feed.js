// Social feed: every post and like is a publication of `demo:feed`; the page folds them into
// posts with like counts, newest first. History gives a late joiner the recent ones.
import { connect, el, clock, randomId, savedNick } from './common.js';

const channel = 'demo:feed';
const nick = savedNick();
document.getElementById('author').textContent = nick;
const list = document.querySelector('[data-test="posts"]');
const posts = new Map(); // post id → {node, likes: Set of nicks}

const herald = connect();

function likeButton(post) {
  const liked = post.likes.has(nick);
  return el('button', {
    class: `like${liked ? ' liked' : ''}`, dataset: { test: 'like' }, 'aria-pressed': String(liked),
    onclick: () => herald.publish(channel, { type: 'like', post: post.id, by: nick, liked: !liked }).catch(() => {}),
  }, `♥ ${post.likes.size}`);
}

/** Applies one publication: a new post, or a like on one. */
function apply(publication, live) {
  const event = publication.data ?? {};
  if (event.type === 'post' && typeof event.text === 'string' && !posts.has(event.id)) {
    const post = { id: event.id, likes: new Set() };
    post.likeSlot = el('span');
    post.node = el('li', { dataset: { test: 'feed-item', offset: publication.offset }, class: live ? 'flash' : '' },
      el('div', { class: 'meta' }, el('b', {}, String(event.author)), ` · ${clock(publication.time)}`),
      el('p', { style: 'margin:.3rem 0' }, event.text),
      post.likeSlot);
    post.likeSlot.append(likeButton(post));
    posts.set(event.id, post);
    document.getElementById('no-posts')?.remove();
    list.prepend(post.node);
  } else if (event.type === 'like' && posts.has(event.post)) {
    const post = posts.get(event.post);
    if (event.liked === false) post.likes.delete(event.by);
    else post.likes.add(event.by);
    post.likeSlot.replaceChildren(likeButton(post));
  }
}

async function start() {
  let since;
  try {
    const page = await herald.history(channel, { limit: 200, reverse: true });
    for (const publication of page.publications.reverse()) apply(publication, false);
    since = page.position;
  } catch (error) {
    list.prepend(el('li', { class: 'empty' }, `history unavailable: ${error.message}`));
  }
  const subscription = herald.subscribe(channel, since ? { since } : {});
  subscription.on('publication', (publication) => apply(publication, true));
  subscription.on('subscribed', ({ recovered }) => {
    if (recovered === false) list.prepend(el('li', { class: 'notice' }, 'The feed moved on while you were away: reload for the latest.'));
  });
}

document.getElementById('post-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = event.target.elements.text;
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  try {
    await herald.publish(channel, { type: 'post', id: randomId(10), author: nick, text });
  } catch (error) {
    input.value = text;
    alert(`Not posted: ${error.message}`);
  }
});

start();
