//! Campaigns: a mail to every confirmed subscriber of a list, composed once (or from one
//! of the namespace's email templates), sent at a time the team chooses, at a rate it
//! chooses, each mail through the email product with the subscriber's own unsubscribe
//! link; with open and click counts when the team opts in.
//!
//! One worker in the cluster (the leader of election `subscribe-campaigns`) sends: a
//! campaign due is sent in subscriber order from its cursor, each mail with an
//! idempotency key of its own (the campaign, its start and the subscriber), so a worker
//! killed half-way and its successor send nobody twice and skip nobody. A namespace's
//! daily limit (the email product's) pauses a campaign for an hour at a time.
//!
//! Tracking (opt-in, `track`): the HTML body's `http(s)` links go through a signed link
//! of the API that counts the click and redirects (only to the link that was signed: no
//! open redirect), and a 1×1 image counts the open. Subscribers are counted once each; what
//! identifies them in those links is a digest of their address, not the address.

use super::{State, Subscribe, Subscriber, Who, bad, digest, now};
use micro::{Code, Status};
use micro_core::store::Query;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where due campaigns are listed: `_campaigns/<namespace>/<name>` (no namespace starts
/// with `_`).
const DUE: &str = "_campaigns/";
/// How long the sending worker's leadership lasts without a refresh.
const LEADER_TTL: Duration = Duration::from_secs(10);
/// How often the worker looks for campaigns due.
const POLL: Duration = Duration::from_secs(1);
/// How long one campaign sends before the others due get their turn.
const STEP: Duration = Duration::from_secs(5);
/// How long a campaign pauses when the namespace's daily mail is spent.
const PAUSE: u64 = 3600;
/// The default and the largest rate, mails per minute.
const DEFAULT_RATE: u32 = 1000;
const MAX_RATE: u32 = 60_000;

/// Where a campaign is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Being composed: changed with `Campaigns.Save`.
    Draft,
    /// Waiting for its time.
    Scheduled,
    /// Being sent.
    Sending,
    /// Sent to every subscriber.
    Sent,
    /// Stopped by the team (what went, went).
    Cancelled,
}

/// A campaign.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Its name: 1 to 40 lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The list it goes to (its confirmed subscribers).
    pub list: String,
    /// One of the namespace's email templates to compose from (its subject and bodies are
    /// copied in when the campaign is saved), instead of `subject`, `text` and `html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The subject: a template of the email product (`{{name}}`, `{{email}}`, `{{list}}`).
    #[serde(default)]
    pub subject: String,
    /// The plain-text body, a template (`{{unsubscribe_url}}` too).
    #[serde(default)]
    pub text: String,
    /// The HTML body, a template whose values are escaped.
    #[serde(default)]
    pub html: Option<String>,
    /// Count opens and clicks (the HTML body's links go through the API).
    #[serde(default)]
    pub track: bool,
    /// Mails per minute at most (default 1000).
    #[serde(default)]
    pub rate: Option<u32>,
    /// Where it is (set by the service).
    #[serde(default = "draft")]
    pub state: CampaignState,
    /// When it goes (Unix seconds; set by `Campaigns.Send`).
    #[serde(default)]
    pub send_at: Option<u64>,
    /// When it was made.
    #[serde(default)]
    pub created: u64,
    /// When sending began.
    #[serde(default)]
    pub started: Option<u64>,
    /// When the last mail went.
    #[serde(default)]
    pub finished: Option<u64>,
    /// Mails handed to the email product.
    #[serde(default)]
    pub sent: u32,
    /// Subscribers the email product refused (a bounced address, …).
    #[serde(default)]
    pub failed: u32,
    /// The first refusals, in words.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The last subscriber sent to (its key), where sending goes on.
    #[serde(default)]
    pub cursor: String,
    /// Paused until then (the namespace's daily mail was spent).
    #[serde(default)]
    pub paused_until: Option<u64>,
}

fn draft() -> CampaignState {
    CampaignState::Draft
}

/// What became of a campaign.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct CampaignReport {
    /// The campaign.
    pub campaign: Option<Campaign>,
    /// Subscribers who opened it (once each; tracked campaigns, mail clients that load images).
    pub opens: u32,
    /// Subscribers who clicked a link (once each).
    pub clicks: u32,
    /// Clicks by link: subscribers each, most first.
    pub links: BTreeMap<String, u32>,
    /// Subscribers of the list who unsubscribed since it began.
    pub unsubscribed: u32,
}

fn campaign_key(ns: &str, name: &str) -> String {
    format!("{ns}/campaign/{name}")
}

impl Subscribe {
    /// Saves a draft (the team's managers); a campaign being sent or sent is not changed.
    pub(crate) async fn save_campaign(&self, who: &Who<'_>, mut c: Campaign) -> Result<Campaign, Status> {
        who.manager()?;
        if !super::valid_list(&c.name) {
            return Err(bad(format!(
                "{:?} is not a campaign name: 1 to 40 lowercase letters, digits, - and _",
                c.name
            )));
        }
        if self.list(who.ns, &c.list).await?.is_none() {
            return Err(Status::new(Code::NotFound, super::NAME, format!("no list {}", c.list)));
        }
        let before = self.read_json::<Campaign>(&campaign_key(who.ns, &c.name)).await?;
        if let Some(b) = &before
            && b.state != CampaignState::Draft
        {
            return Err(Status::new(
                Code::FailedPrecondition,
                super::NAME,
                format!("campaign {} is {:?}: only a draft changes", c.name, b.state).to_lowercase(),
            ));
        }
        if let Some(t) = &c.template {
            if !c.subject.is_empty() || !c.text.is_empty() || c.html.is_some() {
                return Err(bad("give a template or subject/text/html, not both"));
            }
            let reply = self
                .email(who.ns)?
                .call_json("email", "Email.Templates", &json!({}))
                .await
                .map_err(|e| Status::new(e.code(), super::NAME, format!("the email templates: {}", e.detail())))?;
            let found = reply["templates"].as_array().and_then(|ts| ts.iter().find(|x| x["name"] == t.as_str()));
            let Some(found) = found else {
                return Err(Status::new(Code::NotFound, super::NAME, format!("no email template {t:?}")));
            };
            c.subject = found["subject"].as_str().unwrap_or_default().to_string();
            c.text = found["text"].as_str().unwrap_or_default().to_string();
            c.html = found["html"].as_str().map(str::to_string);
        }
        if c.subject.trim().is_empty() || c.subject.len() > 300 || c.subject.chars().any(char::is_control) {
            return Err(bad("a campaign needs a subject: one line of at most 300 bytes"));
        }
        if c.text.trim().is_empty() && c.html.as_deref().is_none_or(|h| h.trim().is_empty()) {
            return Err(bad("a campaign needs a text or an html body"));
        }
        if c.text.len() > 200_000 || c.html.as_ref().is_some_and(|h| h.len() > 200_000) {
            return Err(bad("a body is larger than 200000 bytes"));
        }
        if let Some(r) = c.rate
            && !(1..=MAX_RATE).contains(&r)
        {
            return Err(bad(format!("rate is 1 to {MAX_RATE} mails a minute")));
        }
        c.state = CampaignState::Draft;
        (c.send_at, c.started, c.finished, c.paused_until) = (None, None, None, None);
        (c.sent, c.failed, c.errors, c.cursor) = (0, 0, Vec::new(), String::new());
        c.created = before.map(|b| b.created).unwrap_or_else(now);
        self.write_json(campaign_key(who.ns, &c.name), &c).await?;
        Ok(c)
    }

    async fn campaign(&self, ns: &str, name: &str) -> Result<Campaign, Status> {
        let gone = || Status::new(Code::NotFound, super::NAME, format!("no campaign {name}"));
        if !super::valid_list(name) {
            return Err(gone());
        }
        self.read_json::<Campaign>(&campaign_key(ns, name)).await?.ok_or_else(gone)
    }

    /// The namespace's campaigns, newest first.
    pub(crate) async fn campaigns(&self, who: &Who<'_>) -> Result<Vec<Campaign>, Status> {
        who.manager()?;
        let keys = self
            .store
            .list(&self.table, &format!("{}/campaign/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(c) = self.read_json::<Campaign>(&k).await? {
                out.push(c);
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Schedules a draft: at `at` (Unix seconds), or now.
    pub(crate) async fn send_campaign(&self, who: &Who<'_>, name: &str, at: Option<u64>) -> Result<Campaign, Status> {
        who.manager()?;
        let mut c = self.campaign(who.ns, name).await?;
        if c.state != CampaignState::Draft {
            return Err(Status::new(
                Code::FailedPrecondition,
                super::NAME,
                format!("campaign {name} is {}: only a draft is sent", state_word(c.state)),
            ));
        }
        let t = now();
        let at = at.unwrap_or(t);
        if at > t + 365 * 86_400 {
            return Err(bad("send_at is within a year"));
        }
        c.state = CampaignState::Scheduled;
        c.send_at = Some(at.max(t));
        // Listed as due before it says so: the worker drops an entry whose campaign is
        // not scheduled or sending.
        self.write_json(format!("{DUE}{}/{name}", who.ns), &1).await?;
        self.write_json(campaign_key(who.ns, name), &c).await?;
        Ok(c)
    }

    /// Stops a campaign not sent yet (what went, went); a draft stays a draft.
    pub(crate) async fn cancel_campaign(&self, who: &Who<'_>, name: &str) -> Result<Campaign, Status> {
        who.manager()?;
        let mut c = self.campaign(who.ns, name).await?;
        if matches!(c.state, CampaignState::Scheduled | CampaignState::Sending) {
            c.state = CampaignState::Cancelled;
            c.finished = Some(now());
            self.write_json(campaign_key(who.ns, name), &c).await?;
            let _ = self.store.delete(&self.table, &format!("{DUE}{}/{name}", who.ns)).await;
        }
        Ok(c)
    }

    /// Deletes a campaign that is not being sent, with its counts.
    pub(crate) async fn delete_campaign(&self, who: &Who<'_>, name: &str) -> Result<(), Status> {
        who.manager()?;
        let c = self.campaign(who.ns, name).await?;
        if matches!(c.state, CampaignState::Scheduled | CampaignState::Sending) {
            return Err(Status::new(Code::FailedPrecondition, super::NAME, "cancel it first: it is being sent"));
        }
        for prefix in ["copen", "cclick", "clink"] {
            for k in self
                .store
                .list(
                    &self.table,
                    &format!("{}/{prefix}/{name}/", who.ns),
                    &Query { prefix: true, ..Default::default() },
                )
                .await?
            {
                let _ = self.store.delete(&self.table, &k).await;
            }
        }
        self.store.delete(&self.table, &campaign_key(who.ns, name)).await
    }

    /// A campaign with its opens, clicks and unsubscribes.
    pub(crate) async fn report(&self, who: &Who<'_>, name: &str) -> Result<CampaignReport, Status> {
        who.manager()?;
        let c = self.campaign(who.ns, name).await?;
        let count = |prefix: String| async move {
            self.store.list(&self.table, &prefix, &Query { prefix: true, ..Default::default() }).await.map(|k| k.len())
        };
        let opens = count(format!("{}/copen/{name}/", who.ns)).await? as u32;
        let clicks = count(format!("{}/cclick/{name}/", who.ns)).await? as u32;
        let mut links = BTreeMap::new();
        for k in self
            .store
            .list(&self.table, &format!("{}/clink/{name}/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?
        {
            // `…/clink/<name>/<link digest>/<subscriber>`: the link's URL is kept under
            // `…/clinkurl/<name>/<link digest>`.
            let Some(link) = k.rsplit('/').nth(1) else { continue };
            let url = self
                .read_json::<String>(&format!("{}/clinkurl/{name}/{link}", who.ns))
                .await?
                .unwrap_or_else(|| link.to_string());
            *links.entry(url).or_insert(0) += 1;
        }
        let mut unsubscribed = 0;
        if let Some(started) = c.started {
            for s in self.subscribers(who, &c.list).await? {
                if s.unsubscribed.is_some_and(|u| u >= started) {
                    unsubscribed += 1;
                }
            }
        }
        Ok(CampaignReport { campaign: Some(c), opens, clicks, links, unsubscribed })
    }

    fn email(&self, ns: &str) -> Result<micro::Client, Status> {
        self.client
            .get()
            .map(|c| c.clone().namespace(ns))
            .ok_or_else(|| Status::new(Code::Unavailable, super::NAME, "the product is starting: try again"))
    }

    /// A link that counts `subscriber`'s click on `url` of campaign `name`, then goes there.
    fn click_link(&self, key: &[u8], ns: &str, name: &str, subscriber: &str, url: &str) -> String {
        let sig = Self::sign(key, &format!("click\n{name}\n{subscriber}\n{url}"));
        format!(
            "{}/subscribe/v1/{ns}/c/{name}?{}",
            self.api_url,
            super::query(&[("s", subscriber), ("u", url), ("sig", &sig)])
        )
    }

    /// The image that counts `subscriber`'s open of campaign `name`.
    fn open_pixel(&self, key: &[u8], ns: &str, name: &str, subscriber: &str) -> String {
        let sig = Self::sign(key, &format!("open\n{name}\n{subscriber}"));
        format!(
            "<img src=\"{}/subscribe/v1/{ns}/o/{name}?{}\" width=\"1\" height=\"1\" alt=\"\">",
            self.api_url,
            super::query(&[("s", subscriber), ("sig", &sig)]).replace('&', "&amp;")
        )
    }

    /// Counts a tracked open or click (the link's signature checked): for a click, where
    /// to go.
    pub(crate) async fn track(
        &self,
        ns: &str,
        what: &str,
        name: &str,
        q: Option<&str>,
    ) -> Result<Option<String>, Status> {
        if micro::web::repeated_param(q).is_some() {
            return Err(bad("the link gives a parameter twice"));
        }
        let p = |n: &str| micro::web::query_param(q, n).unwrap_or_default();
        let (subscriber, url, sig) = (p("s"), p("u"), p("sig"));
        let signed = match what {
            "c" => format!("click\n{name}\n{subscriber}\n{url}"),
            _ => format!("open\n{name}\n{subscriber}"),
        };
        let want = Self::sign(&self.key(ns).await?, &signed);
        if sig.is_empty() || !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), sig.as_bytes())) {
            return Err(Status::new(Code::PermissionDenied, super::NAME, "the link's signature is wrong"));
        }
        if !super::valid_list(name) || subscriber.len() != 32 || !subscriber.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the link is incomplete"));
        }
        let t = now();
        if what == "c" {
            let link = digest(&url);
            self.write_json(format!("{ns}/cclick/{name}/{subscriber}"), &t).await?;
            self.write_json(format!("{ns}/clinkurl/{name}/{link}"), &url).await?;
            self.write_json(format!("{ns}/clink/{name}/{link}/{subscriber}"), &t).await?;
            // A click shows the mail was opened, images or not.
            self.write_json(format!("{ns}/copen/{name}/{subscriber}"), &t).await?;
            return Ok(Some(url));
        }
        self.write_json(format!("{ns}/copen/{name}/{subscriber}"), &t).await?;
        Ok(None)
    }

    /// One subscriber's mail of campaign `c`: the Email.Send request.
    async fn campaign_mail(
        &self,
        ns: &str,
        c: &Campaign,
        list: &super::List,
        s: &Subscriber,
        key: &[u8],
    ) -> Result<serde_json::Value, Status> {
        let unsubscribe = self.unsubscribe_link(ns, &list.name, &s.email).await?;
        let subscriber = digest(&s.email);
        let html = match (&c.html, c.track) {
            (Some(h), true) => {
                let tracked = rewrite_links(h, |url| self.click_link(key, ns, &c.name, &subscriber, url));
                let pixel = self.open_pixel(key, ns, &c.name, &subscriber);
                Some(match tracked.rfind("</body>") {
                    Some(i) => format!("{}{pixel}{}", &tracked[..i], &tracked[i..]),
                    None => format!("{tracked}{pixel}"),
                })
            }
            (h, _) => h.clone(),
        };
        let title = if list.title.is_empty() { list.name.clone() } else { list.title.clone() };
        let mut text = c.text.clone();
        if !text.is_empty() && !text.contains("{{unsubscribe_url}}") {
            text.push_str("\n\n--\nTo unsubscribe, open {{unsubscribe_url}}\n");
        }
        let mut body = json!({
            "to": [s.email],
            "subject": c.subject,
            "text": text,
            "vars": {"name": s.name, "email": s.email, "list": title, "unsubscribe_url": unsubscribe},
            "unsubscribe": unsubscribe,
            "key": format!("campaign/{}/{}/{subscriber}", c.name, c.started.unwrap_or_default()),
        });
        if let Some(h) = html {
            body["html"] = json!(h);
        }
        Ok(body)
    }

    /// Sends what is due of one campaign for at most `budget`.
    async fn step(&self, ns: &str, name: &str, budget: Duration) -> Result<Step, Status> {
        let Some(mut c) = self.read_json::<Campaign>(&campaign_key(ns, name)).await? else { return Ok(Step::Done) };
        let t = now();
        match c.state {
            CampaignState::Scheduled if c.send_at.is_some_and(|at| at <= t) => {
                c.state = CampaignState::Sending;
                c.started = Some(t);
                self.write_json(campaign_key(ns, name), &c).await?;
                tracing::info!(service = super::NAME, namespace = ns, campaign = name, "campaign started");
            }
            CampaignState::Scheduled => return Ok(Step::Waiting),
            CampaignState::Sending => {}
            _ => return Ok(Step::Done),
        }
        if c.paused_until.is_some_and(|p| p > t) {
            return Ok(Step::Waiting);
        }
        let Some(list) = self.list(ns, &c.list).await? else {
            c.state = CampaignState::Cancelled;
            c.errors.push(format!("the list {} was deleted", c.list));
            c.finished = Some(now());
            self.write_json(campaign_key(ns, name), &c).await?;
            return Ok(Step::Done);
        };
        let key = self.key(ns).await?;
        let client = self.email(ns)?;
        let rate = c.rate.unwrap_or(DEFAULT_RATE).clamp(1, MAX_RATE);
        let gap = Duration::from_secs_f64(60.0 / f64::from(rate));
        let began = tokio::time::Instant::now();
        let prefix = format!("{ns}/sub/{}/", list.name);
        let mut keys = self.store.list(&self.table, &prefix, &Query { prefix: true, ..Default::default() }).await?;
        keys.sort();
        let mut n = 0u32;
        let mut done = true;
        let from = c.cursor.clone();
        for k in keys.into_iter().filter(|k| from.is_empty() || *k > from) {
            if began.elapsed() >= budget {
                done = false;
                break;
            }
            // The rate: the n-th mail of this step goes no sooner than n gaps in.
            let due = began + gap * n;
            tokio::time::sleep_until(due).await;
            let Some(s) = self.read_json::<Subscriber>(&k).await? else { continue };
            if s.state == State::Subscribed {
                let body = self.campaign_mail(ns, &c, &list, &s, &key).await?;
                match client.call_json("email", "Email.Send", &body).await {
                    Ok(_) => c.sent += 1,
                    Err(e) if e.code() == Code::ResourceExhausted => {
                        // The namespace's mail for the day is spent: later, from here.
                        c.paused_until = Some(now() + PAUSE);
                        c.errors.truncate(9);
                        c.errors.push(format!("paused: {}", e.detail()));
                        self.write_json(campaign_key(ns, name), &c).await?;
                        return Ok(Step::Waiting);
                    }
                    Err(e) if e.code() == Code::Unavailable || e.code() == Code::Internal => return Err(e),
                    Err(e) => {
                        c.failed += 1;
                        if c.errors.len() < 10 {
                            c.errors.push(format!("{}: {}", s.email, e.detail()));
                        }
                    }
                }
                n += 1;
            }
            c.cursor = k;
            // The cursor is saved every 20 mails: a successor resumes from there, and the
            // mails' keys make the email product send nobody twice in between.
            if n.is_multiple_of(20) {
                self.write_json(campaign_key(ns, name), &c).await?;
            }
        }
        if done {
            c.state = CampaignState::Sent;
            c.finished = Some(now());
            c.paused_until = None;
            tracing::info!(
                service = super::NAME,
                namespace = ns,
                campaign = name,
                sent = c.sent,
                failed = c.failed,
                "campaign sent"
            );
        }
        // A cancel while sending wins: it is read again before writing.
        if let Some(now_is) = self.read_json::<Campaign>(&campaign_key(ns, name)).await?
            && now_is.state == CampaignState::Cancelled
        {
            return Ok(Step::Done);
        }
        self.write_json(campaign_key(ns, name), &c).await?;
        Ok(if done { Step::Done } else { Step::More })
    }
}

/// What became of a campaign's turn.
enum Step {
    /// Nothing more to do for it (sent, cancelled, gone).
    Done,
    /// Its time ran out with more to send.
    More,
    /// Not now (scheduled later, or paused).
    Waiting,
}

fn state_word(s: CampaignState) -> &'static str {
    match s {
        CampaignState::Draft => "a draft",
        CampaignState::Scheduled => "scheduled",
        CampaignState::Sending => "being sent",
        CampaignState::Sent => "sent",
        CampaignState::Cancelled => "cancelled",
    }
}

/// `html` with each `href="http(s)://…"` (double or single quotes) replaced by `track(url)`;
/// links holding a template's `{{` (the unsubscribe link) are left as they are.
pub(crate) fn rewrite_links(html: &str, track: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.to_ascii_lowercase().find("href=") {
        let after = &rest[i + 5..];
        let Some(quote) = after.chars().next().filter(|q| *q == '"' || *q == '\'') else {
            out.push_str(&rest[..i + 5]);
            rest = after;
            continue;
        };
        let body = &after[1..];
        let Some(end) = body.find(quote) else {
            out.push_str(rest);
            return out;
        };
        let url = &body[..end];
        let unescaped = url.replace("&amp;", "&");
        let lower = unescaped.to_ascii_lowercase();
        out.push_str(&rest[..i + 5]);
        out.push(quote);
        if (lower.starts_with("https://") || lower.starts_with("http://")) && !url.contains("{{") {
            out.push_str(&track(&unescaped).replace('&', "&amp;"));
        } else {
            out.push_str(url);
        }
        out.push(quote);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Sends campaigns while this node leads election `subscribe-campaigns`, until stopped.
pub(crate) async fn run(sub: Subscribe, sync: micro::data::SyncHandle, mut stopping: micro::Stopping) {
    loop {
        let elected = tokio::select! {
            l = sync.elect("subscribe-campaigns", LEADER_TTL) => l,
            _ = stopping.stopped() => return,
        };
        let mut leadership = match elected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(service = super::NAME, error = %e, "cannot campaign to send campaigns; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stopping.stopped() => return,
                }
            }
        };
        while !leadership.is_lost() && !stopping.is_stopping() {
            match tick(&sub, &stopping).await {
                // More to send at once: no pause.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(service = super::NAME, error = %e, "sending campaigns failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = leadership.lost() => {}
                _ = stopping.stopped() => {}
            }
        }
        leadership.resign().await;
        if stopping.is_stopping() {
            return;
        }
    }
}

/// One look at the campaigns due: each gets a few seconds in turn. Returns whether one
/// ran out of its time with more to send (the next look comes at once).
async fn tick(sub: &Subscribe, stopping: &micro::Stopping) -> Result<bool, Status> {
    let due = sub.store.list(&sub.table, DUE, &Query { prefix: true, ..Default::default() }).await?;
    let mut more = false;
    for entry in due {
        if stopping.is_stopping() {
            return Ok(false);
        }
        let Some((ns, name)) = entry.strip_prefix(DUE).and_then(|r| r.split_once('/')) else { continue };
        match sub.step(ns, name, STEP).await? {
            Step::Done => sub.store.delete(&sub.table, &entry).await?,
            Step::More => more = true,
            Step::Waiting => {}
        }
    }
    Ok(more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_rewritten_but_not_the_unsubscribe_one() {
        let html = r#"<a href="https://shop.example/a?x=1&amp;y=2">A</a> <a href='http://b.example'>B</a> <a href="{{unsubscribe_url}}">U</a> <a href="mailto:x@y.z">M</a> <a href=plain>P</a>"#;
        let out = rewrite_links(html, |u| format!("T[{u}]"));
        assert_eq!(
            out,
            r#"<a href="T[https://shop.example/a?x=1&amp;y=2]">A</a> <a href='T[http://b.example]'>B</a> <a href="{{unsubscribe_url}}">U</a> <a href="mailto:x@y.z">M</a> <a href=plain>P</a>"#
        );
        assert_eq!(rewrite_links("no links", |u| u.into()), "no links");
        assert_eq!(rewrite_links("<a href=\"https://x", |u| u.into()), "<a href=\"https://x");
    }
}
