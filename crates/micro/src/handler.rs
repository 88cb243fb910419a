//! Handlers from plain serde types, served with the JSON codec.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use micro_core::registry::Endpoint;
use micro_core::{BoxStream, Status};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;

/// What a handler sees of its call besides the request: metadata, namespace and caller.
#[derive(Clone, Debug)]
pub struct Context {
    headers: http::HeaderMap,
    caller: Option<crate::auth::Caller>,
}

impl Context {
    /// A context over request headers.
    pub fn new(headers: http::HeaderMap) -> Context {
        Context { headers, caller: None }
    }

    /// The context with the caller the service's authorizer verified.
    pub fn with_caller(mut self, caller: Option<crate::auth::Caller>) -> Context {
        self.caller = caller;
        self
    }

    /// Who calls, as the service's authorizer verified it ([`crate::auth::Authorizer`]);
    /// `None` when the service enforces nothing (no server, or its own hook).
    pub fn caller(&self) -> Option<&crate::auth::Caller> {
        self.caller.as_ref()
    }

    /// The namespace of the call: the verified caller's, else `micro-namespace`'s, else `micro`.
    pub fn namespace(&self) -> &str {
        match &self.caller {
            Some(c) => &c.namespace,
            None => namespace_of(&self.headers),
        }
    }

    /// A metadata value by key (header name, case-insensitive).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.headers.get(key).and_then(|v| v.to_str().ok())
    }

    /// All request headers.
    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
}

/// The namespace named by the `micro-namespace` header, or the default.
pub fn namespace_of(headers: &http::HeaderMap) -> &str {
    headers
        .get(micro_core::metadata::NAMESPACE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(micro_core::namespace::DEFAULT)
}

/// The namespace of a tonic request (for handlers generated from protos): the verified
/// caller's ([`crate::auth::Caller`]), else the `micro-namespace` header's, else the default.
pub fn namespace<T>(req: &tonic::Request<T>) -> String {
    if let Some(c) = crate::auth::Caller::of(req) {
        return c.namespace.clone();
    }
    req.metadata()
        .get(micro_core::metadata::NAMESPACE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(micro_core::namespace::DEFAULT)
        .to_string()
}

/// What a handler produced.
pub(crate) enum Output {
    Unary(Bytes),
    Stream(BoxStream<Result<Bytes, Status>>),
}

/// A type-erased JSON handler.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: Context, body: Bytes) -> BoxFuture<'static, Result<Output, Status>>;
    fn endpoint(&self, name: &str) -> Endpoint;
}

pub(crate) fn schema_of<T: JsonSchema>() -> serde_json::Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
    let mut v = serde_json::to_value(settings.into_generator().into_root_schema_for::<T>()).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
    }
    v
}

fn parse<T: DeserializeOwned>(id: &str, body: &[u8]) -> Result<T, Status> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| Status::bad_request(id, format!("invalid request: {e}")))
}

fn encode<T: Serialize>(id: &str, v: &T) -> Result<Bytes, Status> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| Status::internal(id, format!("encoding reply: {e}")))
}

pub(crate) struct Unary<Req, Res, F> {
    pub(crate) id: String,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, Fut> Handler for Unary<Req, Res, F>
where
    Req: DeserializeOwned + JsonSchema + Send + 'static,
    Res: Serialize + JsonSchema + Send + 'static,
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Res, Status>> + Send + 'static,
{
    fn call(&self, ctx: Context, body: Bytes) -> BoxFuture<'static, Result<Output, Status>> {
        let id = self.id.clone();
        match parse::<Req>(&id, &body) {
            Err(e) => futures::future::ready(Err(e)).boxed(),
            Ok(req) => {
                let fut = (self.f)(ctx, req);
                async move {
                    let res = fut.await.map_err(|e| e.or_id(&id))?;
                    Ok(Output::Unary(encode(&id, &res)?))
                }
                .boxed()
            }
        }
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            request: schema_of::<Req>(),
            response: schema_of::<Res>(),
            metadata: [("codec".to_string(), "json".to_string())].into(),
        }
    }
}

pub(crate) struct ServerStream<Req, Res, F> {
    pub(crate) id: String,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(Req) -> Res>,
}

impl<Req, Res, F, S> Handler for ServerStream<Req, Res, F>
where
    Req: DeserializeOwned + JsonSchema + Send + 'static,
    Res: Serialize + JsonSchema + Send + 'static,
    F: Fn(Context, Req) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Res, Status>> + Send + 'static,
{
    fn call(&self, ctx: Context, body: Bytes) -> BoxFuture<'static, Result<Output, Status>> {
        let id = self.id.clone();
        let out = parse::<Req>(&id, &body).map(|req| {
            let s = (self.f)(ctx, req).map(move |r| r.map_err(|e| e.or_id(&id)).and_then(|v| encode(&id, &v)));
            Output::Stream(s.boxed())
        });
        futures::future::ready(out).boxed()
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            request: schema_of::<Req>(),
            response: schema_of::<Res>(),
            metadata: [("codec".to_string(), "json".to_string()), ("stream".to_string(), "server".to_string())].into(),
        }
    }
}
