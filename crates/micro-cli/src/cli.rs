//! Command parsing and the built-in commands.

use crate::envs::{Env, Envs};
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use micro::registry::{Registry, RemoteRegistry};
use micro::{CallOptions, Client};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "micro", version, about = "Micro: build, share and run microservices", disable_help_subcommand = true)]
pub(crate) struct Cli {
    /// Server address (host:port of its proxy); default: MICRO_SERVER, else the current environment.
    #[arg(long, global = true)]
    pub(crate) server: Option<String>,
    /// Namespace to act in.
    #[arg(long, global = true)]
    pub(crate) namespace: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub(crate) output: Format,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the server: registry, API gateway and proxy.
    Server {
        /// API gateway address [env: MICRO_API_ADDRESS; default 127.0.0.1:8080].
        #[arg(long)]
        api_address: Option<String>,
        /// gRPC proxy address [env: MICRO_PROXY_ADDRESS; default 127.0.0.1:8081].
        #[arg(long)]
        proxy_address: Option<String>,
        /// Web dashboard address, or `off` [env: MICRO_WEB_ADDRESS; default 127.0.0.1:8082].
        #[arg(long)]
        web_address: Option<String>,
        /// Data directory [env: MICRO_DATA_DIR; default ~/.micro/data].
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// A TOML config file [env: MICRO_CONFIG].
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// TLS on every port: off, auto (a local CA in the data dir) or cert.pem,key.pem
        /// [env: MICRO_TLS; default off].
        #[arg(long)]
        tls: Option<String>,
        /// Join a cluster through this node's proxy (host:port), with the token of
        /// MICRO_JOIN_TOKEN (or --join-token) [env: MICRO_JOIN].
        #[arg(long)]
        join: Option<String>,
        /// The one-time token from `micro cluster token` [env: MICRO_JOIN_TOKEN, which
        /// keeps it off the command line other users can read].
        #[arg(long)]
        join_token: Option<String>,
    },
    /// List the registered services.
    Services,
    /// Show a resource.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Call an endpoint: micro call helloworld Greeter.Hello '{"name":"Alice"}'
    Call {
        service: String,
        endpoint: String,
        /// The request as JSON (default {}).
        request: Option<String>,
        /// Metadata to send, key=value (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
        /// Deadline, like 500ms, 5s or 1m.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Call a streaming endpoint and print every reply.
    Stream {
        service: String,
        endpoint: String,
        /// The request(s) as JSON; several for client/bidi streams.
        requests: Vec<String>,
        /// Metadata to send, key=value (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
    },
    /// Check a service's health (Debug.Health on every node).
    Health { service: String },
    /// Show a service's stats (Debug.Stats).
    Stats { service: String },
    /// Show or change the environment (server address and namespace).
    Env {
        #[command(subcommand)]
        action: Option<EnvAction>,
    },
    /// Register an HTTP app (any language) as a service, optionally running it.
    #[command(name = "service")]
    HttpService {
        /// Service name.
        #[arg(long)]
        name: String,
        /// The app's HTTP address, like http://127.0.0.1:9090.
        #[arg(long)]
        endpoint: String,
        /// The command that runs the app (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a service from source: a local folder, a git URL[@ref] or a service name.
    Run(crate::runtime::RunArgs),
    /// Rebuild a service and roll its instances (a new one is ready before an old one stops).
    Update(crate::runtime::RunArgs),
    /// Your own settings: micro user config set git.credentials.HOST TOKEN
    User {
        #[command(subcommand)]
        cmd: crate::runtime::UserCmd,
    },
    /// Stop a service the runtime runs, and forget it.
    Kill { name: String },
    /// The services the runtime runs: NAME VERSION SOURCE STATUS BUILD UPDATED METADATA.
    Status { name: Option<String> },
    /// A service's logs (or its build's).
    Logs {
        name: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: u32,
        /// The build's output.
        #[arg(long)]
        build: bool,
    },
    /// Read and write the store: micro store read|write|delete|list|databases|tables
    Store {
        #[command(subcommand)]
        cmd: crate::data::StoreCmd,
    },
    /// Read and write config: micro config get|set|del
    Config {
        #[command(subcommand)]
        cmd: crate::data::ConfigCmd,
    },
    /// The gateway's rate limits of the namespace: micro ratelimit set|list|delete
    Ratelimit {
        #[command(subcommand)]
        cmd: crate::ratelimit::RatelimitCmd,
    },
    /// A trace's spans from the server's and the services' recent ones: micro trace <trace-id>
    Trace {
        /// The trace id (32 hex digits) or a whole traceparent.
        trace_id: String,
        /// Ask only these services (besides the server); default: every service of the namespace.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// The cluster's membership: micro cluster token
    Cluster {
        #[command(subcommand)]
        cmd: crate::cluster::ClusterCmd,
    },
    /// The network of clusters this one peers with: micro network token|join|nodes|routes|services|graph
    Network {
        #[command(subcommand)]
        cmd: crate::network::NetworkCmd,
    },
    /// The self-hosted platform's licence: micro license keygen|issue|show|install
    License {
        #[command(subcommand)]
        cmd: crate::licence::LicenseCmd,
    },
    /// The namespace's static sites: micro app deploy|list|deploys|rollback|delete
    App {
        #[command(subcommand)]
        cmd: crate::app::AppCmd,
    },
    /// The namespace's custom domains: micro domain add|verify|list|remove
    Domain {
        #[command(subcommand)]
        cmd: crate::domain::DomainCmd,
    },
    /// The namespace's public hosting: micro hosting [list|public|private|default]
    Hosting {
        #[command(subcommand)]
        cmd: Option<crate::domain::HostingCmd>,
    },
    /// The gateway's response cache rules of the namespace: micro cache set|list|delete|purge
    Cache {
        #[command(subcommand)]
        cmd: crate::cache::CacheCmd,
    },
    /// Requests and bytes metered in the namespace: micro usage --since 24h --by service
    Usage(crate::usage::UsageArgs),
    /// Publish an event: micro publish orders '{"id":1}'
    Publish {
        topic: String,
        /// The payload as JSON.
        payload: String,
        /// Ordering key: events with one key are consumed in order.
        #[arg(long)]
        key: Option<String>,
        /// Metadata key=value (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
    },
    /// Consume or read events: micro events consume|read|topics
    Events {
        #[command(subcommand)]
        cmd: crate::data::EventsCmd,
    },
    /// Store and fetch objects: micro blob put|get|list|delete
    Blob {
        #[command(subcommand)]
        cmd: crate::data::BlobCmd,
    },
    /// Print a shell completion script: micro completion bash > /etc/bash_completion.d/micro
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Log in: micro login [--id admin] [--password …] (prompts; the local admin's
    /// password file is used when present)
    Login {
        /// Account id (alias --email).
        #[arg(long, alias = "email", default_value = "admin")]
        id: String,
        /// The secret (default: MICRO_PASSWORD, the local admin password file, or a prompt).
        #[arg(long, allow_hyphen_values = true)]
        password: Option<String>,
    },
    /// Forget this environment's credentials.
    Logout,
    /// Show the logged-in account.
    Whoami,
    /// Manage namespaces (admin of micro): micro namespace list|create|delete
    Namespace {
        #[command(subcommand)]
        cmd: crate::auth::NamespaceCmd,
    },
    /// Teams on the platform, as the person who logged in: micro team create|invite|accept|
    /// members|set-role|remove|transfer|namespaces [--flags] (in the current namespace)
    #[command(disable_help_flag = true)]
    Team {
        /// The command and its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The namespace's plan and what it allows: micro plan [set community|personal|team|list]
    Plan {
        /// `set <plan>` or `list`; nothing shows the current namespace's plan.
        args: Vec<String>,
    },
    /// Manage accounts and rules: micro auth create|delete|list account|rule
    Auth {
        #[command(subcommand)]
        cmd: crate::auth::AuthCmd,
    },
    /// Create a new service project that builds, runs and has a passing test.
    New {
        /// Service name: lowercase letters, digits and '-'.
        name: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Path of the micro framework crate to depend on (default: this build's checkout).
        #[arg(long)]
        micro_path: Option<std::path::PathBuf>,
    },
    #[command(external_subcommand)]
    Dynamic(Vec<String>),
}

#[derive(Subcommand)]
pub(crate) enum Get {
    /// A service with its nodes and endpoints.
    Service { name: String },
}

#[derive(Subcommand)]
pub(crate) enum EnvAction {
    /// Switch to an environment.
    Set { name: String },
    /// Add an environment.
    Add {
        name: String,
        /// host:port of the server's proxy (https://host:port when it speaks TLS).
        address: String,
        /// Default namespace.
        #[arg(long, default_value = "micro")]
        ns: String,
        /// A CA certificate (PEM file) to trust the server's certificate by.
        #[arg(long)]
        ca: Option<String>,
    },
    /// Delete an environment.
    Del { name: String },
}

/// What `micro server` prints, followed by a JSON object (`api`, `web`, `proxy`), once
/// every listener is up: the line programs that start it wait for.
const READY_PREFIX: &str = "micro server ready ";

/// Runs the CLI; returns the exit code.
pub(crate) async fn run(args: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let verbose_server = matches!(cli.command, Command::Server { .. });
    init_tracing(verbose_server);
    match dispatch(cli).await {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                msg = format!("{msg}: {cause}");
            }
            eprintln!("error: {msg}");
            1
        }
    }
}

fn init_tracing(server: bool) {
    if server {
        micro::log::init_with_traces("info", "micro");
    } else {
        micro::log::init("warn");
    }
}

#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) address: String,
    pub(crate) namespace: String,
    pub(crate) json: bool,
    /// The logged-in account's access token, sent with calls.
    pub(crate) token: Option<String>,
    /// How calls reach the server (trusting the environment's CA).
    pub(crate) transport: micro::Transport,
}

impl Ctx {
    /// The registry, sending the token when logged in (registering needs an account).
    pub(crate) fn registry(&self) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(RemoteRegistry::on(self.channel()?)))
    }

    fn token_source(&self) -> Option<Arc<dyn micro::data::TokenSource>> {
        self.token.clone().map(|t| Arc::new(micro::data::StaticToken(t)) as Arc<dyn micro::data::TokenSource>)
    }

    /// A gRPC channel to the server, sending the token when logged in.
    pub(crate) fn channel(&self) -> Result<micro::Channel> {
        micro::Channel::on(&self.transport, &self.address, self.token_source()).map_err(|e| anyhow!("{}", e.detail()))
    }

    pub(crate) fn client(&self) -> Client {
        let client = Client::via_proxy(&self.address).transport(self.transport.clone()).namespace(&self.namespace);
        match self.token_source() {
            Some(t) => client.auth(Arc::new(micro::auth::Bearer(t))),
            None => client,
        }
    }

    /// The data services, sending the token when logged in.
    pub(crate) fn data(&self) -> micro::data::Data {
        micro::data::Data::remote_on(&self.transport, &self.address, &self.namespace, self.token_source())
    }
}

/// Points the CLI's `local` environment at this server over TLS, trusting its CA, when
/// `local` names this server (the same port on this host); whether it does.
fn trust_local(proxy: &str, ca: &str) -> bool {
    let port = |a: &str| a.rsplit_once(':').map(|(_, p)| p.to_string());
    let Ok(mut envs) = Envs::load() else { return false };
    let Some(local) = envs.envs.get_mut("local") else { return false };
    let host = local.address.split_once("://").map(|(_, a)| a).unwrap_or(&local.address).to_string();
    let loopback = host.starts_with("127.0.0.1:") || host.starts_with("localhost:") || host.starts_with("[::1]:");
    if !loopback || port(&host) != port(proxy) {
        return false;
    }
    local.address = proxy.to_string();
    local.ca = Some(ca.to_string());
    match envs.save() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("micro server: could not make the local environment trust the CA: {e}");
            false
        }
    }
}

fn ctx(cli: &Cli) -> Result<Ctx> {
    let env: Env = Envs::load()?.current();
    let address = cli.server.clone().or_else(|| std::env::var("MICRO_SERVER").ok()).unwrap_or(env.address);
    // The namespace: the flag, MICRO_NAMESPACE, the logged-in account's, the environment's.
    let namespace = cli
        .namespace
        .clone()
        .or_else(|| std::env::var("MICRO_NAMESPACE").ok())
        .or_else(|| env.credentials.as_ref().map(|c| c.namespace.clone()))
        .unwrap_or(if env.namespace.is_empty() { "micro".into() } else { env.namespace });
    // The public roots, MICRO_CA's and the environment's CA.
    let mut roots = micro::tls::extra_roots_from_env().map_err(|e| anyhow!("{}", e.detail()))?;
    if let Some(ca) = &env.ca {
        roots.extend(micro::tls::extra_roots(ca).map_err(|e| anyhow!("the environment's CA: {}", e.detail()))?);
    }
    let transport = micro::Transport::trusting(&roots).map_err(|e| anyhow!("{}", e.detail()))?;
    Ok(Ctx { address, namespace, json: cli.output == Format::Json, token: None, transport })
}

/// Turns a status into a one-line error.
pub(crate) fn status_err(e: micro::Status) -> anyhow::Error {
    let unreachable = e.detail().contains("cannot reach") || e.detail().contains("connect error");
    if e.code() == micro::Code::Unavailable && e.detail().contains("certificate") {
        anyhow!(
            "{} (trust the server's CA: MICRO_CA=<ca.pem>, or micro env add <name> https://… --ca <ca.pem>)",
            e.detail()
        )
    } else if e.code() == micro::Code::Unavailable && unreachable {
        anyhow!("{} (is `micro server` running? set MICRO_SERVER or --server)", e.detail())
    } else if e.id().is_empty() {
        anyhow!("{} ({})", e.detail(), e.http_status())
    } else {
        anyhow!("{}: {} ({})", e.id(), e.detail(), e.http_status())
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let mut c = ctx(&cli)?;
    // Commands that call services send the logged-in account's token (refreshed when it
    // is about to expire; an expired session just calls anonymously).
    let local = matches!(
        cli.command,
        Command::Server { .. }
            | Command::New { .. }
            | Command::Completion { .. }
            | Command::Env { .. }
            | Command::Login { .. }
            | Command::Logout
    ) || matches!(&cli.command, Command::License { cmd } if cmd.offline());
    if !local {
        c.token = crate::auth::token(&c).await.ok().flatten();
    }
    match cli.command {
        Command::Server { api_address, proxy_address, web_address, data_dir, config, tls, join, join_token } => {
            // --join and --join-token stand for their variables (so the token may come
            // from the environment and the address from the flag).
            let lookup = |k: &str| match k {
                "MICRO_JOIN" if join.is_some() => join.clone(),
                "MICRO_JOIN_TOKEN" if join_token.is_some() => join_token.clone(),
                _ => std::env::var(k).ok(),
            };
            let mut cfg = micro_server::Config::from_env(lookup, config.as_deref())?;
            if let Some(a) = api_address {
                cfg.api_address = a;
            }
            if let Some(a) = proxy_address {
                cfg.proxy_address = a;
            }
            if let Some(a) = web_address {
                cfg.web_address = (a != "off").then_some(a);
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(t) = tls {
                cfg.tls = t.parse().map_err(|e| anyhow!("--tls {e}"))?;
            }
            micro_server::private_files();
            // Listening before the banner: a SIGTERM right after it still drains.
            let stop = micro::server::signals();
            let server = micro_server::start(cfg).await?;
            let scheme = if server.tls() { "https" } else { "http" };
            let web = server.web_address().map(|a| format!(" web {scheme}://{a}")).unwrap_or_default();
            let proxy = if server.tls() {
                format!("https://{}", server.proxy_address())
            } else {
                server.proxy_address().to_string()
            };
            println!("micro server: api {scheme}://{}{web} proxy {proxy}", server.api_address());
            let ca = server.ca_path().map(|p| p.display().to_string());
            if let Some(ca) = &ca {
                let cli = if trust_local(&proxy, ca) {
                    "the CLI's local environment trusts it".to_string()
                } else {
                    format!("the CLI: MICRO_CA={ca} micro --server {proxy} …")
                };
                println!("micro server: TLS by the local CA {ca} (curl --cacert {ca}; {cli})");
            }
            // For programs that start it (tests, scripts): every listener is up.
            let ready = serde_json::json!({
                "api": format!("{scheme}://{}", server.api_address()),
                "web": server.web_address().map(|a| format!("{scheme}://{a}")),
                "proxy": proxy,
                "ca": ca,
                "network": server.network_address().map(|a| a.to_string()),
            });
            println!("{READY_PREFIX}{ready}");
            stop.await;
            server.stop().await;
            micro::telemetry::flush();
            Ok(())
        }
        Command::New { name, dir, micro_path } => {
            let dir = crate::new::generate(&name, dir, micro_path.as_deref())?;
            let next = format!("cd {} && cargo test && cargo run", dir.display());
            output::done(
                c.json,
                serde_json::json!({"created": "project", "id": name, "dir": dir, "next": next}),
                Some(format!("created {} in {}\nnext: {next}", name, dir.display())),
            );
            Ok(())
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "micro", &mut script);
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Command::Login { id, password } => crate::auth::login(&c, &id, password).await,
        Command::Logout => crate::auth::logout(&c),
        Command::Whoami => crate::auth::whoami(&c).await,
        Command::Auth { cmd } => crate::auth::auth(&c, cmd).await,
        Command::Run(args) => crate::runtime::run(&c, args, false).await,
        Command::Update(args) => crate::runtime::run(&c, args, true).await,
        Command::User { cmd } => crate::runtime::user(&c, cmd).await,
        Command::Kill { name } => crate::runtime::kill(&c, &name).await,
        Command::Status { name } => crate::runtime::status(&c, name.as_deref()).await,
        Command::Logs { name, follow, lines, build } => crate::runtime::logs(&c, &name, follow, lines, build).await,
        Command::Namespace { cmd } => crate::auth::namespace(&c, cmd).await,
        Command::Team { args } => crate::team::team(&c, &args).await,
        Command::Plan { args } => crate::team::plan(&c, &args).await,
        Command::Store { cmd } => crate::data::store(&c, cmd).await,
        Command::Config { cmd } => crate::data::config(&c, cmd).await,
        Command::Ratelimit { cmd } => crate::ratelimit::ratelimit(&c, cmd).await,
        Command::Usage(args) => crate::usage::usage(&c, args).await,
        Command::Cache { cmd } => crate::cache::cache(&c, cmd).await,
        Command::App { cmd } => crate::app::app(&c, cmd).await,
        Command::Domain { cmd } => crate::domain::domain(&c, cmd).await,
        Command::Hosting { cmd } => crate::domain::hosting(&c, cmd.unwrap_or(crate::domain::HostingCmd::List)).await,
        Command::Cluster { cmd } => crate::cluster::cluster(&c, cmd).await,
        Command::Network { cmd } => crate::network::network(&c, cmd).await,
        Command::License { cmd } => crate::licence::license(&c, cmd).await,
        Command::Trace { trace_id, services } => crate::trace::trace(&c, &trace_id, services).await,
        Command::Publish { topic, payload, key, metadata } => {
            crate::data::publish(&c, &topic, &payload, key, &metadata).await
        }
        Command::Events { cmd } => crate::data::events(&c, cmd).await,
        Command::Blob { cmd } => crate::data::blob(&c, cmd).await,
        Command::Services => {
            let services = c.registry()?.list_services(&c.namespace).await.map_err(status_err)?;
            if c.json {
                output::json(&serde_json::to_value(&services)?);
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    vec![s.name.clone(), s.version.clone(), s.nodes.len().to_string(), s.endpoints.len().to_string()]
                })
                .collect();
            rows.sort();
            output::table(&["NAME", "VERSION", "NODES", "ENDPOINTS"], &rows);
            Ok(())
        }
        Command::Get { what: Get::Service { name } } => get_service(&c, &name).await,
        Command::Call { service, endpoint, request, metadata, timeout } => {
            let body = parse_json(request.as_deref().unwrap_or("{}"))?;
            let opts = CallOptions {
                timeout: timeout.as_deref().map(parse_duration).transpose()?,
                metadata: parse_metadata(&metadata)?,
                namespace: None,
            };
            let out = c
                .client()
                .call_raw(&service, &endpoint, micro::metadata::CONTENT_TYPE_GRPC_JSON, body.into(), &opts)
                .await
                .map_err(status_err)?;
            print_reply(&out);
            Ok(())
        }
        Command::Stream { service, endpoint, requests, metadata } => {
            let reqs: Vec<bytes::Bytes> = if requests.is_empty() {
                vec![b"{}".to_vec().into()]
            } else {
                requests.iter().map(|r| parse_json(r).map(Into::into)).collect::<Result<_>>()?
            };
            let opts = CallOptions { metadata: parse_metadata(&metadata)?, ..Default::default() };
            let mut s = c
                .client()
                .stream_json(&service, &endpoint, futures::stream::iter(reqs), &opts)
                .await
                .map_err(status_err)?;
            while let Some(m) = s.next().await {
                print_reply(&m.map_err(status_err)?);
            }
            Ok(())
        }
        Command::Health { service } => health(&c, &service, "Debug.Health").await,
        Command::Stats { service } => health(&c, &service, "Debug.Stats").await,
        Command::Env { action } => env_cmd(&c, action),
        Command::HttpService { name, endpoint, command } => {
            crate::dynamic::http_service(&c, &name, &endpoint, &command).await
        }
        Command::Dynamic(args) => {
            if args.first().is_some_and(|a| a == "db")
                && let Some(done) = crate::db::run(&c, &args[1..]).await
            {
                return done;
            }
            crate::dynamic::run(&c, &args).await
        }
    }
}

fn parse_json(s: &str) -> Result<Vec<u8>> {
    let v: Value = serde_json::from_str(s).map_err(|e| anyhow!("the request is not valid JSON: {e}"))?;
    if !v.is_object() {
        bail!("the request must be a JSON object, like '{{\"name\":\"Alice\"}}'");
    }
    Ok(serde_json::to_vec(&v)?)
}

pub(crate) fn print_reply(b: &[u8]) {
    match serde_json::from_slice::<Value>(b) {
        Ok(v) => output::json(&v),
        Err(_) => println!("{}", String::from_utf8_lossy(b)),
    }
}

fn parse_metadata(kv: &[String]) -> Result<Vec<(String, String)>> {
    kv.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("metadata {s:?} is not key=value"))
        })
        .collect()
}

/// Checks the name of a gateway rule (`micro ratelimit`, `micro cache`): letters, digits,
/// `-` and `_`, at most 64; the error names `command`.
pub(crate) fn check_rule_name(command: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{command}: {name:?} is not a rule name (letters, digits, - and _; at most 64)");
    }
    Ok(())
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}: use 500ms, 5s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}: use 500ms, 5s or 1m"),
    };
    if !(secs > 0.0 && secs < 86_400.0 * 365.0) {
        bail!("invalid duration {s:?}: must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

async fn get_service(c: &Ctx, name: &str) -> Result<()> {
    let services = c.registry()?.get_service(&c.namespace, name).await.map_err(status_err)?;
    if c.json {
        output::json(&serde_json::to_value(&services)?);
        return Ok(());
    }
    for s in &services {
        println!("service  {}", s.name);
        println!("version  {}", s.version);
        for (k, v) in &s.metadata {
            println!("metadata {k}={v}");
        }
        println!();
        let rows: Vec<Vec<String>> =
            s.nodes.iter().map(|n| vec![n.id.clone(), n.address.clone(), meta(&n.metadata)]).collect();
        output::table(&["ID", "ADDRESS", "METADATA"], &rows);
        println!();
        for e in &s.endpoints {
            let stream = e.stream().map(|s| format!(" ({s} stream)")).unwrap_or_default();
            println!("{}{stream}", e.name);
            println!("  request:  {}", fields(&e.request));
            println!("  response: {}", fields(&e.response));
        }
    }
    Ok(())
}

fn meta(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `{name string, count integer, page {size integer}}` from a JSON Schema.
pub(crate) fn fields(schema: &Value) -> String {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return "{}".into() };
    let parts: Vec<String> = props
        .iter()
        .map(|(k, v)| {
            let ty = v.get("type").and_then(Value::as_str).unwrap_or("any");
            match ty {
                "object" if v.get("properties").is_some() => format!("{k} {}", fields(v)),
                "array" => format!(
                    "{k} []{}",
                    v.get("items").and_then(|i| i.get("type")).and_then(Value::as_str).unwrap_or("any")
                ),
                t => format!("{k} {t}"),
            }
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

async fn health(c: &Ctx, service: &str, endpoint: &str) -> Result<()> {
    let out = c
        .client()
        .call_raw(
            service,
            endpoint,
            micro::metadata::CONTENT_TYPE_GRPC_JSON,
            b"{}".to_vec().into(),
            &CallOptions::default(),
        )
        .await
        .map_err(status_err)?;
    print_reply(&out);
    Ok(())
}

fn env_cmd(c: &Ctx, action: Option<EnvAction>) -> Result<()> {
    let mut envs = Envs::load().context("loading ~/.micro/config")?;
    match action {
        None => {
            if c.json {
                print_envs(&envs);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = envs
                .envs
                .iter()
                .map(|(n, e)| {
                    vec![
                        if *n == envs.current { format!("* {n}") } else { format!("  {n}") },
                        e.address.clone(),
                        e.namespace.clone(),
                    ]
                })
                .collect();
            output::table(&["NAME", "ADDRESS", "NAMESPACE"], &rows);
            return Ok(());
        }
        Some(EnvAction::Set { name }) => envs.set(&name)?,
        Some(EnvAction::Add { name, address, ns, ca }) => {
            micro_core::namespace::validate(&ns).map_err(|e| anyhow!("{}", e.detail()))?;
            if let Some(ca) = &ca {
                micro::tls::extra_roots(ca).map_err(|e| anyhow!("--ca: {}", e.detail()))?;
            }
            envs.envs.insert(name, Env { address, namespace: ns, credentials: None, ca, ..Env::default() });
        }
        Some(EnvAction::Del { name }) => {
            if name == "local" {
                bail!("the local environment cannot be deleted");
            }
            if envs.envs.remove(&name).is_none() {
                bail!("no environment {name:?}");
            }
            if envs.current == name {
                envs.current = "local".into();
            }
        }
    }
    envs.save()?;
    // A change shows the environments as they are now.
    if c.json {
        print_envs(&envs);
    }
    Ok(())
}

/// The environments as JSON, never with their credentials.
fn print_envs(envs: &Envs) {
    let list: serde_json::Map<String, Value> = envs
        .envs
        .iter()
        .map(|(n, e)| {
            let who = e.credentials.as_ref().map(|c| c.account.clone());
            (n.clone(), serde_json::json!({"address": e.address, "namespace": e.namespace, "account": who}))
        })
        .collect();
    output::json(&serde_json::json!({"current": envs.current, "envs": list}));
}
