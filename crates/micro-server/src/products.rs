//! The products of `services/`: services built with the framework like any user's, which
//! `micro server` hosts in-process (`MICRO_SERVICES` chooses) and which also run on their
//! own (each crate has a binary). A product registers in the `micro` namespace as a
//! platform service and serves every namespace: the registry answers other namespaces'
//! lookups of its name with its nodes (those registered by its account, `product-<name>`),
//! unless the namespace has a service of that name itself.

use micro::Service;

/// A product: its name, how it adds its handlers to a service configured by its host,
/// and where in its own table (`micro`/`<name>` of the store) it keeps a namespace's data,
/// which goes with the namespace.
pub(crate) struct Product {
    pub(crate) name: &'static str,
    pub(crate) build: fn(Service, &crate::Config, &Hosted) -> Service,
    /// Where in the store it keeps a namespace's data (none: not in the store; the
    /// database keeps its own, see [`Hosted`]).
    pub(crate) tenant_prefix: Option<fn(&str) -> String>,
    /// Scopes its account holds in `micro` besides `data` and `platform`.
    pub(crate) scopes: &'static [&'static str],
}

/// What the server opened for the products it hosts: the database's records, which
/// deleting a namespace deletes too.
#[derive(Clone, Default)]
pub(crate) struct Hosted {
    pub(crate) db: Option<std::sync::Arc<micro_db::Db>>,
    /// The files product, which the gateway serves (set once the store and blobs are).
    pub(crate) files: Option<std::sync::Arc<micro_files::Files>>,
    /// The apps product, whose sites the gateway serves (set once the store and blobs are).
    pub(crate) apps: Option<std::sync::Arc<micro_apps::Apps>>,
    /// The subscribe product, whose public pages the gateway serves.
    pub(crate) subscribe: Option<std::sync::Arc<micro_subscribe::Subscribe>>,
    /// The push product, whose API (and realtime streams) the gateway serves.
    pub(crate) push: Option<std::sync::Arc<micro_push::Push>>,
    /// The billing product (set once the store and the runtime's database are open).
    pub(crate) billing: Option<std::sync::Arc<micro_billing::Billing>>,
    /// What the installed licence allows: products check their paid features with it
    /// (`licence.check("team")`); installing a licence updates it for all at once.
    pub(crate) licence: micro_core::licence::Gate,
}

impl Hosted {
    /// Opens what the selected products keep outside the store. The database keeps its
    /// records in a file of this node, or in PostgreSQL when `MICRO_DB_URL` names one or
    /// the node shares a database with others (`shared`: the cluster's): nodes sharing
    /// it then share the records.
    pub(crate) async fn open(config: &crate::Config, shared: Option<&str>) -> Result<Hosted, String> {
        if !config.services.iter().any(|s| s == micro_db::NAME) {
            return Ok(Hosted::default());
        }
        let mut settings = config.db.clone();
        if settings.path.as_os_str().is_empty() {
            settings.path = config.data_dir.join("db.sqlite");
        }
        let db = micro_db::Db::connect(&settings, shared).await.map_err(|e| match (&settings.url, shared) {
            (None, None) => format!("the database ({}): {e}", settings.path.display()),
            _ => format!("the database (PostgreSQL): {e}"),
        })?;
        Ok(Hosted { db: Some(db), ..Default::default() })
    }
}

/// Every product, by name.
pub(crate) const PRODUCTS: [Product; 10] = [
    Product {
        name: micro_distributed::NAME,
        build: |s, _, _| micro_distributed::service(s),
        tenant_prefix: Some(micro_distributed::tenant_prefix),
        scopes: &[],
    },
    Product {
        name: micro_email::NAME,
        build: |s, c, _| micro_email::service_with(s, c.email.clone()),
        tenant_prefix: Some(micro_email::tenant_prefix),
        scopes: &[],
    },
    // It creates namespaces and their owners' accounts: it administers micro.
    Product {
        name: micro_platform::NAME,
        build: |s, c, h| micro_platform::service_with(s, c.platform_url.clone(), h.licence.clone()),
        tenant_prefix: Some(micro_platform::tenant_prefix),
        scopes: &[micro_core::auth::ADMIN_SCOPE],
    },
    Product {
        name: micro_db::NAME,
        build: |s, _, h| match &h.db {
            Some(db) => micro_db::service_with(s, db.clone()),
            None => s,
        },
        tenant_prefix: None,
        scopes: &[],
    },
    // It signs its users' tokens through the auth service.
    Product {
        name: micro_users::NAME,
        build: |s, _, _| micro_users::service_with(s),
        tenant_prefix: Some(micro_users::tenant_prefix),
        scopes: &[micro_core::auth::ISSUER_SCOPE],
    },
    // Files come and go as HTTP (ranges, multipart forms), which the gateway serves; the
    // service manages them (the dashboard's, the CLI's calls).
    Product {
        name: micro_files::NAME,
        build: |s, _, h| match &h.files {
            Some(files) => micro_files::service_with(s, files.clone()),
            None => s,
        },
        tenant_prefix: Some(micro_files::tenant_prefix),
        scopes: &[],
    },
    // Sites are served by the gateway; the service deploys and rolls them back.
    Product {
        name: micro_apps::NAME,
        build: |s, _, h| match &h.apps {
            Some(apps) => micro_apps::service_with(s, apps.clone()),
            None => s,
        },
        tenant_prefix: Some(micro_apps::tenant_prefix),
        scopes: &[],
    },
    // Mailing lists: the gateway serves the public pages; the service, the lists.
    Product {
        name: micro_subscribe::NAME,
        build: |s, _, h| match &h.subscribe {
            Some(sub) => micro_subscribe::service_with(s, sub.clone()),
            None => s,
        },
        tenant_prefix: Some(micro_subscribe::tenant_prefix),
        scopes: &[],
    },
    // Notifications: the gateway serves the apps' API and realtime streams; the service,
    // the team's sends.
    Product {
        name: micro_push::NAME,
        build: |s, _, h| match &h.push {
            Some(push) => micro_push::service_with(s, push.clone()),
            None => s,
        },
        tenant_prefix: Some(micro_push::tenant_prefix),
        scopes: &[],
    },
    // Invoices and payments: it reads every namespace's usage, so it administers micro.
    Product {
        name: micro_billing::NAME,
        build: |s, _, h| match &h.billing {
            Some(billing) => micro_billing::service_with(s, billing.clone()),
            None => s,
        },
        tenant_prefix: Some(micro_billing::tenant_prefix),
        scopes: &[micro_core::auth::ADMIN_SCOPE],
    },
];

/// Where every product keeps namespace `ns`'s data: a table and a key prefix.
pub(crate) fn tenant_data(ns: &str) -> Vec<(micro_core::store::Table, String)> {
    PRODUCTS
        .iter()
        .filter_map(|p| {
            Some((micro_core::store::Table::new(micro_core::namespace::DEFAULT, p.name), (p.tenant_prefix?)(ns)))
        })
        .collect()
}

/// The names of every product.
pub const NAMES: [&str; 10] = [
    micro_distributed::NAME,
    micro_email::NAME,
    micro_platform::NAME,
    micro_db::NAME,
    micro_users::NAME,
    micro_files::NAME,
    micro_apps::NAME,
    micro_subscribe::NAME,
    micro_push::NAME,
    micro_billing::NAME,
];

/// The account a product runs as.
pub(crate) fn account(name: &str) -> String {
    format!("product-{name}")
}

/// The products `MICRO_SERVICES` selects: `all`, `off` (none) or a comma-separated list.
pub(crate) fn select(v: &str) -> Result<Vec<String>, String> {
    match v.trim() {
        "all" | "" => Ok(NAMES.iter().map(|s| s.to_string()).collect()),
        "off" | "none" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if NAMES.contains(&s) {
                    Ok(s.to_string())
                } else {
                    Err(format!("unknown service {s:?}: use all, off, or some of {}", NAMES.join(", ")))
                }
            })
            .collect(),
    }
}

/// Starts the selected products against the server's proxy at `proxy`, each with a fresh
/// secret for its account.
pub(crate) async fn start(
    auth: &crate::auth::AuthService,
    proxy: &str,
    transport: &micro::Transport,
    config: &crate::Config,
    hosted: &Hosted,
) -> Result<Vec<micro::Running>, micro_core::Status> {
    let mut running = Vec::new();
    let hosts = |p: &&Product| {
        (p.name != micro_db::NAME || hosted.db.is_some())
            && (p.name != micro_files::NAME || hosted.files.is_some())
            && (p.name != micro_apps::NAME || hosted.apps.is_some())
            && (p.name != micro_subscribe::NAME || hosted.subscribe.is_some())
            && (p.name != micro_push::NAME || hosted.push.is_some())
            && (p.name != micro_billing::NAME || hosted.billing.is_some())
    };
    for p in PRODUCTS.iter().filter(|p| config.services.iter().any(|s| s == p.name)).filter(hosts) {
        let (id, secret) = auth.product_account(p.name, p.scopes).await?;
        let service = (p.build)(
            Service::new(p.name).server(proxy).transport(transport.clone()).credentials(&id, &secret),
            config,
            hosted,
        );
        match service.start().await {
            Ok(r) => running.push(r),
            Err(e) => {
                for r in running {
                    r.stop().await;
                }
                return Err(e);
            }
        }
        tracing::info!(service = p.name, "product started");
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selecting() {
        assert_eq!(
            select("all").unwrap(),
            vec!["distributed", "email", "platform", "db", "users", "files", "apps", "subscribe", "push", "billing"]
        );
        assert!(select("off").unwrap().is_empty());
        assert_eq!(select(" distributed ,").unwrap(), vec!["distributed"]);
        assert!(select("distributed,bills").unwrap_err().contains("unknown service \"bills\""));
    }
}
