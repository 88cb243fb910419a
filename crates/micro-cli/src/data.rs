//! `micro store`, `micro config`, `micro publish`, `micro events` and `micro blob`.

use crate::cli::{Ctx, parse_duration, status_err};
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use futures::StreamExt;
use micro::data::Data;
use micro_core::events::{ConsumeOptions, Message, ReadOptions};
use micro_core::store::{Order, Query, Record, Table};
use serde_json::{Value, json};
use std::io::Write;

/// Where a store command acts.
#[derive(clap::Args, Clone)]
pub(crate) struct StoreScope {
    /// Table (default: "default").
    #[arg(long, default_value = "default")]
    table: String,
    /// Database (default: the namespace).
    #[arg(long)]
    database: Option<String>,
}

impl StoreScope {
    fn table(&self, c: &Ctx) -> Table {
        Table::new(self.database.clone().unwrap_or_else(|| c.namespace.clone()), &self.table)
    }
}

/// How a store read or list matches keys.
#[derive(clap::Args, Clone)]
pub(crate) struct StoreQuery {
    /// The key is a prefix.
    #[arg(long)]
    prefix: bool,
    /// The key is a suffix.
    #[arg(long)]
    suffix: bool,
    /// At most this many.
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Skip this many first.
    #[arg(long, default_value_t = 0)]
    offset: u32,
    /// Newest key first (descending order).
    #[arg(long)]
    desc: bool,
}

impl StoreQuery {
    fn query(&self) -> Query {
        Query {
            prefix: self.prefix,
            suffix: self.suffix,
            limit: self.limit,
            offset: self.offset,
            order: if self.desc { Order::Desc } else { Order::Asc },
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum StoreCmd {
    /// Read records: micro store read user/1 (or --prefix user/).
    Read {
        key: String,
        #[command(flatten)]
        query: StoreQuery,
        #[command(flatten)]
        scope: StoreScope,
        /// Verbose: show metadata and expiry.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write a record: micro store write user/1 '{"name":"Alice"}' [--ttl 1h].
    Write {
        key: String,
        value: String,
        /// Expire after this long (like 30s, 10m, 1h).
        #[arg(long)]
        ttl: Option<String>,
        /// Metadata key=value (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
        #[command(flatten)]
        scope: StoreScope,
    },
    /// Delete a record.
    Delete {
        key: String,
        #[command(flatten)]
        scope: StoreScope,
    },
    /// List keys (optionally by --prefix KEY).
    List {
        /// Prefix or suffix (with --prefix/--suffix).
        key: Option<String>,
        #[command(flatten)]
        query: StoreQuery,
        #[command(flatten)]
        scope: StoreScope,
    },
    /// List databases.
    Databases,
    /// List the tables of a database.
    Tables {
        /// Database (default: the namespace).
        #[arg(long)]
        database: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Get a value by dot path (empty for everything): micro config get app.db
    Get {
        path: Option<String>,
        /// Show secrets in plain text.
        #[arg(long)]
        secret: bool,
    },
    /// Set a JSON value (objects merge): micro config set app.db '{"url":"…"}'
    Set {
        path: String,
        value: String,
        /// Encrypt the value at rest; reads show it masked unless --secret is given.
        #[arg(long)]
        secret: bool,
    },
    /// Delete a leaf or subtree.
    Del { path: String },
}

#[derive(Subcommand)]
pub(crate) enum EventsCmd {
    /// Consume a topic, printing each event (acknowledged once printed).
    Consume {
        topic: String,
        /// Consumer group (default: a private one).
        #[arg(long, default_value = "")]
        group: String,
        /// Where a new group starts: new, first, seq:N or time:UNIX_MS.
        #[arg(long, default_value = "new")]
        offset: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Read a topic's history.
    Read {
        topic: String,
        /// Where to start: first, seq:N or time:UNIX_MS.
        #[arg(long, default_value = "first")]
        offset: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List topics.
    Topics,
    /// List a topic's consumer groups and their lag: micro events groups orders
    ///
    /// DELIVERED is the highest sequence number handed to the group, ACKED the one up to
    /// which every event is done, PENDING how many are delivered and not acked yet, and
    /// LAG how many the group has still to finish. Private groups are not listed.
    Groups { topic: String },
}

#[derive(Subcommand)]
pub(crate) enum BlobCmd {
    /// Upload a file: micro blob put photos cat.jpg ./cat.jpg
    Put {
        bucket: String,
        key: String,
        /// The file to upload ("-" for stdin).
        file: String,
        /// Content type (default application/octet-stream).
        #[arg(long, default_value = "")]
        content_type: String,
    },
    /// Download an object to a file ("-" or nothing for stdout).
    Get { bucket: String, key: String, file: Option<String> },
    /// List a bucket's objects.
    List {
        bucket: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete an object.
    Delete { bucket: String, key: String },
}

fn data(c: &Ctx) -> Data {
    c.data()
}

/// The bytes of a value given on the command line: JSON is stored compact, other text as
/// it is.
fn value_bytes(v: &str) -> Vec<u8> {
    match serde_json::from_str::<Value>(v) {
        Ok(j) => serde_json::to_vec(&j).unwrap_or_else(|_| v.as_bytes().to_vec()),
        Err(_) => v.as_bytes().to_vec(),
    }
}

/// A value for display: JSON when it is, else text, else base64.
fn shown(b: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        return v;
    }
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => {
            use base64::Engine;
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn store(c: &Ctx, cmd: StoreCmd) -> Result<()> {
    let d = data(c);
    match cmd {
        StoreCmd::Read { key, query, scope, verbose } => {
            let records = d.store.read(&scope.table(c), &key, &query.query()).await.map_err(status_err)?;
            if c.json {
                let out: Vec<Value> = records
                    .iter()
                    .map(
                        |r| json!({"key": r.key, "value": shown(&r.value), "metadata": r.metadata, "expiry": r.expiry}),
                    )
                    .collect();
                output::json(&Value::Array(out));
            } else if verbose {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        let md: Vec<String> = r.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        let exp = r.expiry.map(|e| e.to_string()).unwrap_or_default();
                        vec![r.key.clone(), text(&shown(&r.value)), md.join(","), exp]
                    })
                    .collect();
                output::table(&["KEY", "VALUE", "METADATA", "EXPIRY"], &rows);
            } else if records.len() == 1 && !query.prefix && !query.suffix {
                println!("{}", text(&shown(&records[0].value)));
            } else {
                let rows: Vec<Vec<String>> =
                    records.iter().map(|r| vec![r.key.clone(), text(&shown(&r.value))]).collect();
                output::table(&["KEY", "VALUE"], &rows);
            }
        }
        StoreCmd::Write { key, value, ttl, metadata, scope } => {
            let mut record = Record::new(key, value_bytes(&value));
            for kv in metadata {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("metadata {kv:?} is not key=value"))?;
                record.metadata.insert(k.to_string(), v.to_string());
            }
            let ttl = ttl.as_deref().map(parse_duration).transpose()?;
            let table = scope.table(c);
            d.store.write(&table, &record, ttl).await.map_err(status_err)?;
            output::done(
                c.json,
                json!({"written": record.key, "table": table.table, "database": table.database}),
                None,
            );
        }
        StoreCmd::Delete { key, scope } => {
            let table = scope.table(c);
            d.store.delete(&table, &key).await.map_err(status_err)?;
            output::done(c.json, json!({"deleted": key, "table": table.table, "database": table.database}), None);
        }
        StoreCmd::List { key, query, scope } => {
            let keys = d
                .store
                .list(&scope.table(c), key.as_deref().unwrap_or(""), &query.query())
                .await
                .map_err(status_err)?;
            print_list(c, &keys);
        }
        StoreCmd::Databases => print_list(c, &d.store.databases().await.map_err(status_err)?),
        StoreCmd::Tables { database } => {
            let db = database.unwrap_or_else(|| c.namespace.clone());
            print_list(c, &d.store.tables(&db).await.map_err(status_err)?);
        }
    }
    Ok(())
}

fn print_list(c: &Ctx, items: &[String]) {
    if c.json {
        output::json(&json!(items));
    } else {
        for i in items {
            println!("{i}");
        }
    }
}

pub(crate) async fn config(c: &Ctx, cmd: ConfigCmd) -> Result<()> {
    let d = data(c);
    match cmd {
        ConfigCmd::Get { path, secret } => {
            let path = path.unwrap_or_default();
            match d.config.get(&c.namespace, &path, secret).await.map_err(status_err)? {
                Some(v) if c.json => output::json(&v),
                Some(Value::String(s)) => println!("{s}"),
                Some(v) => output::json(&v),
                None => bail!("config: {path:?} is not set"),
            }
        }
        ConfigCmd::Set { path, value, secret } => {
            let v: Value = serde_json::from_str(&value)
                .or_else(|_| {
                    // A bare word is a string: micro config set app.mode production
                    if value.trim().is_empty() || value.contains(['{', '[', '"']) {
                        Err(())
                    } else {
                        Ok(Value::String(value.clone()))
                    }
                })
                .map_err(|_| anyhow!("config: the value is not valid JSON: {value}"))?;
            d.config.set(&c.namespace, &path, &v, secret).await.map_err(status_err)?;
            output::done(c.json, json!({"set": path, "secret": secret}), None);
        }
        ConfigCmd::Del { path } => {
            d.config.delete(&c.namespace, &path).await.map_err(status_err)?;
            output::done(c.json, json!({"deleted": path}), None);
        }
    }
    Ok(())
}

fn event_json(e: &micro_core::events::Event) -> Value {
    json!({"topic": e.topic, "seq": e.seq, "timestamp": e.timestamp, "key": e.key, "metadata": e.metadata, "payload": shown(&e.payload)})
}

/// `micro publish <topic> '<json>'`.
pub(crate) async fn publish(
    c: &Ctx,
    topic: &str,
    payload: &str,
    key: Option<String>,
    metadata: &[String],
) -> Result<()> {
    let payload: Value = serde_json::from_str(payload).map_err(|e| anyhow!("the payload is not valid JSON: {e}"))?;
    let mut m = Message { key: key.unwrap_or_default(), payload: serde_json::to_vec(&payload)?, ..Default::default() };
    for kv in metadata {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("metadata {kv:?} is not key=value"))?;
        m.metadata.insert(k.to_string(), v.to_string());
    }
    let e = data(c).events.publish(&c.namespace, topic, &m).await.map_err(status_err)?;
    if c.json {
        output::json(&event_json(&e));
    } else {
        println!("published {topic} #{}", e.seq);
    }
    Ok(())
}

pub(crate) async fn events(c: &Ctx, cmd: EventsCmd) -> Result<()> {
    let d = data(c);
    match cmd {
        EventsCmd::Consume { topic, group, offset, count } => {
            let offset = micro::proto::parse_offset(&offset).map_err(status_err)?;
            let opts = ConsumeOptions { group, offset, ..Default::default() };
            let mut s = d.events.consume(&c.namespace, &topic, &opts).await.map_err(status_err)?;
            let mut n = 0;
            while let Some(delivery) = s.next().await {
                let delivery = delivery.map_err(status_err)?;
                if c.json {
                    println!("{}", event_json(&delivery.event));
                } else {
                    println!("#{} {}", delivery.event.seq, text(&shown(&delivery.event.payload)));
                }
                let _ = std::io::stdout().flush();
                delivery.ack().await.map_err(status_err)?;
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
            // The last acks are on their way: let them reach the server before exiting.
            drop(s);
            micro::data::settle(std::time::Duration::from_secs(5)).await;
        }
        EventsCmd::Read { topic, offset, limit } => {
            let offset = micro::proto::parse_offset(&offset).map_err(status_err)?;
            let opts = ReadOptions { offset: Some(offset), limit, offset_count: 0 };
            let events = d.events.read(&c.namespace, &topic, &opts).await.map_err(status_err)?;
            if c.json {
                output::json(&Value::Array(events.iter().map(event_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = events
                    .iter()
                    .map(|e| vec![e.seq.to_string(), e.timestamp.to_string(), e.key.clone(), text(&shown(&e.payload))])
                    .collect();
                output::table(&["SEQ", "TIMESTAMP", "KEY", "PAYLOAD"], &rows);
            }
        }
        EventsCmd::Topics => print_list(c, &d.events.topics(&c.namespace).await.map_err(status_err)?),
        EventsCmd::Groups { topic } => {
            let groups = d.events.groups(&c.namespace, &topic).await.map_err(status_err)?;
            if c.json {
                output::json(&serde_json::to_value(&groups)?);
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        let n = [g.delivered, g.acked, g.pending, g.lag].map(|n| n.to_string());
                        std::iter::once(g.name.clone()).chain(n).collect()
                    })
                    .collect();
                output::table(&["NAME", "DELIVERED", "ACKED", "PENDING", "LAG"], &rows);
            }
        }
    }
    Ok(())
}

pub(crate) async fn blob(c: &Ctx, cmd: BlobCmd) -> Result<()> {
    let d = data(c);
    match cmd {
        BlobCmd::Put { bucket, key, file, content_type } => {
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading stdin")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {file}"))?
            };
            let chunks = futures::stream::iter([Ok(bytes::Bytes::from(bytes))]).boxed();
            let info = d.blob.put(&c.namespace, &bucket, &key, &content_type, chunks).await.map_err(status_err)?;
            if c.json {
                output::json(&serde_json::to_value(&info)?);
            } else {
                println!("stored {}/{} ({} bytes)", info.bucket, info.key, info.size);
            }
        }
        BlobCmd::Get { bucket, key, file } => {
            let (info, mut chunks) = d.blob.get(&c.namespace, &bucket, &key).await.map_err(status_err)?;
            let to_stdout = matches!(file.as_deref(), None | Some("-"));
            if c.json {
                // The object's description, with its content (as `shown`) when it is not
                // written to a file.
                let mut bytes = Vec::new();
                let mut out: Box<dyn Write> = match file.as_deref() {
                    Some(f) if !to_stdout => {
                        Box::new(std::fs::File::create(f).with_context(|| format!("creating {f}"))?)
                    }
                    _ => Box::new(&mut bytes),
                };
                while let Some(chunk) = chunks.next().await {
                    out.write_all(&chunk.map_err(status_err)?)?;
                }
                out.flush()?;
                drop(out);
                let mut v = serde_json::to_value(&info)?;
                if to_stdout {
                    v["value"] = shown(&bytes);
                } else {
                    v["file"] = json!(file);
                }
                output::json(&v);
                return Ok(());
            }
            let mut out: Box<dyn Write> = match file.as_deref() {
                None | Some("-") => Box::new(std::io::stdout()),
                Some(f) => Box::new(std::fs::File::create(f).with_context(|| format!("creating {f}"))?),
            };
            while let Some(chunk) = chunks.next().await {
                out.write_all(&chunk.map_err(status_err)?)?;
            }
            out.flush()?;
        }
        BlobCmd::List { bucket, prefix } => {
            let objects = d.blob.list(&c.namespace, &bucket, &prefix).await.map_err(status_err)?;
            if c.json {
                output::json(&serde_json::to_value(&objects)?);
            } else {
                let rows: Vec<Vec<String>> = objects
                    .iter()
                    .map(|o| vec![o.key.clone(), o.size.to_string(), o.content_type.clone(), o.modified.to_string()])
                    .collect();
                output::table(&["KEY", "SIZE", "CONTENT TYPE", "MODIFIED"], &rows);
            }
        }
        BlobCmd::Delete { bucket, key } => {
            d.blob.delete(&c.namespace, &bucket, &key).await.map_err(status_err)?;
            output::done(c.json, json!({"deleted": key, "bucket": bucket}), None);
        }
    }
    Ok(())
}
