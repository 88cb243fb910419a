// A static app on the platform: app users sign up and confirm their address, upload a
// picture (shown as a thumbnail), keep notes only they can read, hear notifications while
// online, and subscribe to the newsletter with the list's embeddable form. Deployed with
// `micro app deploy` (config.js names the API and the namespace; micro/ is clients/js/src).
import { Micro } from './micro/index.js';
import { API, NAMESPACE, VERSION } from './config.js';

const micro = new Micro({ url: API, namespace: NAMESPACE });
const $ = (s) => document.querySelector(s);
const status = (text, error = false) => {
  $('#status').textContent = text;
  $('#status').className = error ? 'error' : '';
};
$('#version').textContent = VERSION;

/** Runs `f`, showing its error in words. */
const guarded = (f) => async (e) => {
  e?.preventDefault?.();
  try {
    await f(e);
  } catch (err) {
    status(err.detail || err.message, true);
  }
};

let email = '';
let password = '';

$('#signup-form').addEventListener('submit', guarded(async (e) => {
  const form = e.target;
  email = form.email.value;
  password = form.password.value;
  await micro.users.signup({ email, password });
  $('#verify-form').hidden = false;
  status(`We mailed a code to ${email}.`);
}));

$('#verify-form').addEventListener('submit', guarded(async (e) => {
  await micro.users.verify(email, e.target.code.value, { password });
  await signedIn();
}));

async function signedIn() {
  const user = micro.auth.user;
  document.body.dataset.user = user.id;
  $('#signup').hidden = true;
  $('#app').hidden = false;
  $('#who').textContent = user.email;
  status('Welcome!');
  await showNotes();
  // Notifications while the page is open.
  const live = micro.push.listen((n) => {
    const li = document.createElement('li');
    li.textContent = n.body ? `${n.title}: ${n.body}` : n.title;
    $('#notifications').append(li);
  });
  await live.ready;
  $('#notifications').dataset.ready = 'true';
  // The newsletter's form, as any site embeds it.
  const form = document.createElement('script');
  form.src = `${API}/subscribe/v1/${NAMESPACE}/lists/news/form.js`;
  $('#newsletter').append(form);
}

$('#picture').addEventListener('change', guarded(async (e) => {
  const file = e.target.files[0];
  const f = await micro.files.upload(file, { public: true });
  const img = $('#avatar');
  img.src = micro.files.url(f, { thumb: 100 });
  img.hidden = false;
  status(`Saved ${f.name}.`);
}));

$('#note-form').addEventListener('submit', guarded(async (e) => {
  await micro.collection('notes').create({ text: e.target.text.value, owner: micro.auth.user.id });
  e.target.reset();
  await showNotes();
}));

async function showNotes() {
  const page = await micro.collection('notes').list({ sort: 'created' });
  $('#notes').replaceChildren(
    ...page.items.map((n) => {
      const li = document.createElement('li');
      li.textContent = n.text;
      li.dataset.id = n.id;
      return li;
    }),
  );
}
