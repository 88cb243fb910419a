//! The auth service's gRPC endpoints over [`AuthService`]: each checks who may call it
//! (the caller the core's authorizer verified) and hands the work to the service.

use super::*;

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        let ns = micro::namespace(&req);
        self.require_admin(&req, &ns).map_err(t)?;
        let r = req.into_inner();
        let kind = match r.r#type.as_str() {
            "" | "user" => AccountType::User,
            "service" => AccountType::Service,
            other => return Err(Status::invalid_argument(format!("auth: type {other:?}: use user or service"))),
        };
        if r.scopes.iter().any(|s| s.starts_with("micro:")) {
            return Err(Status::invalid_argument(
                "auth: scopes starting with micro: are the platform's (micro:app is the app users')",
            ));
        }
        let account = Account {
            id: r.id,
            name: r.name,
            kind,
            namespace: ns,
            scopes: r.scopes,
            metadata: r.metadata.into_iter().collect(),
            created: 0,
            verified: false,
        };
        let (account, secret) = self.create(account, &r.secret).await.map_err(t)?;
        Ok(Response::new(pb::GenerateResponse { account: Some((&account).into()), secret }))
    }

    async fn inspect(&self, req: Request<pb::InspectRequest>) -> Result<Response<pb::InspectResponse>, Status> {
        let claims = self.verify(&req.into_inner().token).map_err(t)?;
        Ok(Response::new(pb::InspectResponse { account: Some((&claims.account()).into()), expiry: claims.exp }))
    }

    async fn token(&self, req: Request<pb::TokenRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        let ns = micro::namespace(&req);
        let client = client_address(&req);
        let bearer = micro::auth::bearer(&req.metadata().clone().into_headers());
        let operator = self
            .require_admin(&req, micro_core::namespace::DEFAULT)
            .ok()
            .and_then(|()| Self::caller(&req).map(|a| format!("{}/{}", a.namespace, a.id)));
        let r = req.into_inner();
        if !r.audience.is_empty() {
            // A token for one service, in exchange for the caller's own.
            let token = bearer.ok_or_else(|| {
                t(MicroStatus::new(Code::Unauthenticated, "auth", "a delegated token needs credentials"))
            })?;
            let access_token = self.delegate(&token, &r.audience).map_err(t)?;
            let expiry = self.verify_audience(&access_token, &r.audience).map_err(t)?.exp;
            return Ok(Response::new(pb::TokenResponse { access_token, expiry, ..Default::default() }));
        }
        let out = if r.refresh_token.is_empty() && r.id.is_empty() {
            Err(MicroStatus::bad_request("auth", "log in with an id and a secret, or a refresh token"))
        } else if !r.refresh_token.is_empty() {
            self.refresh(&ns, &r.refresh_token).await
        } else if r.secret.is_empty() && operator.is_some() {
            // An operator may have tokens for any account (it could reset the secret
            // anyway): the account's own secret and sessions are left alone.
            self.impersonate(&ns, &r.id, operator.as_deref().unwrap_or_default()).await
        } else {
            self.login(&ns, &r.id, &r.secret, client.as_deref()).await
        };
        Ok(Response::new(out.map_err(t)?))
    }

    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let ns = micro::namespace(&req);
        self.require_admin(&req, &ns).map_err(t)?;
        let q = Query { prefix: false, ..Default::default() };
        let records = self.inner.store.read(&Self::accounts(&ns), "", &Query { prefix: true, ..q }).await.map_err(t)?;
        let accounts = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<StoredAccount>(&r.value).ok())
            .map(|s| pb::Account::from(&s.account))
            .collect();
        Ok(Response::new(pb::ListAccountsResponse { accounts }))
    }

    async fn delete_account(
        &self,
        req: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let ns = micro::namespace(&req);
        self.require_admin(&req, &ns).map_err(t)?;
        let id = req.into_inner().id;
        self.inner.store.delete(&Self::accounts(&ns), &id).await.map_err(t)?;
        // Its tokens go with it: refresh tokens at once, access tokens by revocation.
        self.revoke_refresh_tokens(&ns, &id).await.map_err(t)?;
        self.inner.revocations.revoke(&ns, Some(&id)).await.map_err(t)?;
        self.delete_settings(&ns, &id).await.map_err(t)?;
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }

    async fn change_secret(
        &self,
        req: Request<pb::ChangeSecretRequest>,
    ) -> Result<Response<pb::ChangeSecretResponse>, Status> {
        let ns = micro::namespace(&req);
        let admin = self.require_admin(&req, &ns).is_ok();
        let client = client_address(&req);
        let r = req.into_inner();
        // Without admin rights this is a login by another name: the same limit on failures,
        // and the same answer for an unknown account as for a wrong secret.
        let keys = limiter::Keys::new(&ns, &r.id, client.as_deref());
        let attempt =
            if admin { None } else { Some(self.inner.failures.begin(&keys).map_err(limiter::too_many).map_err(t)?) };
        let stored = self.load(&ns, &r.id).await.map_err(t)?;
        let mut stored = match stored {
            Some(s) if admin || secret_matches(&r.old_secret, &s.hash) => s,
            None if admin => return Err(t(MicroStatus::not_found("auth", format!("no account {}", r.id)))),
            _ => {
                return Err(t(MicroStatus::new(Code::PermissionDenied, "auth", "wrong account id or old secret")));
            }
        };
        if let Some(attempt) = attempt {
            self.inner.failures.succeeded(&keys, attempt);
        }
        validate_secret(&r.new_secret).map_err(t)?;
        stored.hash = hash_secret(&r.new_secret).map_err(t)?;
        self.save(&stored).await.map_err(t)?;
        // A new secret ends the sessions the old one started.
        self.revoke_refresh_tokens(&ns, &r.id).await.map_err(t)?;
        Ok(Response::new(pb::ChangeSecretResponse {}))
    }

    async fn create_rule(
        &self,
        req: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::CreateRuleResponse>, Status> {
        let ns = micro::namespace(&req);
        self.require_admin(&req, &ns).map_err(t)?;
        let rule = micro::proto::rule_of(req.into_inner().rule.unwrap_or_default()).map_err(t)?;
        self.init_rules(&ns).await.map_err(t)?;
        self.put_rule(&ns, &rule).await.map_err(t)?;
        Ok(Response::new(pb::CreateRuleResponse {}))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        let ns = micro::namespace(&req);
        self.require_admin(&req, &ns).map_err(t)?;
        let id = req.into_inner().id;
        self.init_rules(&ns).await.map_err(t)?;
        self.inner.store.delete(&Self::rules_table(&ns), &format!("r/{id}")).await.map_err(t)?;
        self.rules_changed().await;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn list_rules(&self, req: Request<pb::ListRulesRequest>) -> Result<Response<pb::ListRulesResponse>, Status> {
        let ns = micro::namespace(&req);
        // Admins, and the namespace's services (which enforce the rules themselves).
        let is_own_service = Self::caller(&req).is_some_and(|a| a.kind == AccountType::Service && a.namespace == ns);
        if !is_own_service {
            self.require_admin(&req, &ns).map_err(t)?;
        }
        let mut rules = self.rules(&ns).await.map_err(t)?;
        rules.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Ok(Response::new(pb::ListRulesResponse { rules: rules.iter().map(pb::Rule::from).collect() }))
    }

    type WatchRulesStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ListRulesResponse, Status>> + Send>>;

    async fn watch_rules(
        &self,
        req: Request<pb::WatchRulesRequest>,
    ) -> Result<Response<Self::WatchRulesStream>, Status> {
        let asked = req.get_ref().namespace.clone();
        let ns = if asked.is_empty() { micro::namespace(&req) } else { asked };
        micro_core::namespace::validate(&ns).map_err(t)?;
        // Admins, the namespace's own accounts (a service enforcing the rules runs with
        // one of them), and the products, which serve every namespace.
        let product = |a: &Account| {
            a.namespace == micro_core::namespace::DEFAULT
                && a.kind == AccountType::Service
                && a.has_scope(PLATFORM_SCOPE)
        };
        // (An app user is no account of the namespace to its rules.)
        if Self::caller(&req).is_none_or(|a| (a.namespace != ns || a.kind == AccountType::App) && !product(a)) {
            self.require_admin(&req, &ns).map_err(t)?;
        }
        // The stream ends when the caller's token does (a follower opens it again with a
        // fresh one), so a deleted account or namespace stops hearing of rule changes.
        let expires = micro::auth::Caller::of(&req).and_then(|c| c.expires).unwrap_or(0);
        let until = Duration::from_secs(expires.saturating_sub(now()));
        let auth = self.clone();
        let mut changes = self.inner.generation.subscribe();
        let stream = async_stream::try_stream! {
            let mut last: Option<Arc<Vec<Rule>>> = None;
            loop {
                changes.mark_unchanged();
                let rules = auth.cached_rules(&ns).await.map_err(t)?;
                if last.as_ref() != Some(&rules) {
                    yield pb::ListRulesResponse { rules: rules.iter().map(pb::Rule::from).collect() };
                    last = Some(rules);
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        let deadline = tokio::time::Instant::now() + until;
        let stream = futures::StreamExt::take_until(stream, tokio::time::sleep_until(deadline));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        self.require_admin(&req, micro_core::namespace::DEFAULT).map_err(t)?;
        let name = req.into_inner().name;
        micro_core::namespace::validate(&name).map_err(t)?;
        let table = Self::namespaces();
        // Only "not found" means free: a store that cannot answer is no licence to reuse a name.
        let exists = match self.inner.store.read(&table, &name, &Query::default()).await {
            Ok(_) => true,
            Err(e) if e.code() == Code::NotFound => false,
            Err(e) => return Err(t(e)),
        };
        if name == micro_core::namespace::DEFAULT || exists {
            return Err(t(MicroStatus::new(Code::AlreadyExists, "auth", format!("namespace {name} already exists"))));
        }
        // A re-created name starts empty: refused while a deleted namespace's data remains.
        self.reuse(&name).await.map_err(t)?;
        self.init_rules(&name).await.map_err(t)?;
        let value =
            serde_json::to_vec(&serde_json::json!({"created": now()})).map_err(|e| Status::internal(e.to_string()))?;
        self.inner.store.write(&table, &Record::new(&name, value), None).await.map_err(t)?;
        Ok(Response::new(pb::CreateNamespaceResponse {}))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        self.require_admin(&req, micro_core::namespace::DEFAULT).map_err(t)?;
        let mut namespaces = vec![micro_core::namespace::DEFAULT.to_string()];
        namespaces.extend(self.inner.store.list(&Self::namespaces(), "", &Query::default()).await.map_err(t)?);
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        self.require_admin(&req, micro_core::namespace::DEFAULT).map_err(t)?;
        let name = req.into_inner().name;
        if name == micro_core::namespace::DEFAULT {
            return Err(Status::invalid_argument("auth: the micro namespace cannot be deleted"));
        }
        // Until its data is gone, the name is not handed to anyone else (see `reuse`).
        let tombstone = serde_json::to_vec(&serde_json::json!({"deleted": now()}))
            .map_err(|e| Status::internal(format!("auth: {e}")))?;
        self.inner.store.write(&Self::deleted_namespaces(), &Record::new(&name, tombstone), None).await.map_err(t)?;
        self.inner.store.delete(&Self::namespaces(), &name).await.map_err(t)?;
        // Every token of its accounts stops working now.
        self.inner.revocations.revoke(&name, None).await.map_err(t)?;
        // Its accounts, refresh tokens and rules go with it.
        for table in
            [Self::accounts(&name), Self::refresh_table(&name), Self::rules_table(&name), Self::settings_table(&name)]
        {
            for key in self.inner.store.list(&table, "", &Query::default()).await.map_err(t)? {
                let _ = self.inner.store.delete(&table, &key).await;
            }
        }
        self.rules_changed().await;
        // And its data: services, registrations, records, config, blobs.
        if let Some(data) = self.inner.namespace_data.get() {
            data.delete(&name).await.map_err(t)?;
        }
        Ok(Response::new(pb::DeleteNamespaceResponse {}))
    }

    async fn public_keys(
        &self,
        _req: Request<pb::PublicKeysRequest>,
    ) -> Result<Response<pb::PublicKeysResponse>, Status> {
        // A service asks when it met a key it does not know: the token may be from a node
        // that started after this one's last reload, so read the shared keys first.
        self.reload_keys_at_most_every_200ms().await;
        let keys = self.inner.trusted.read().unwrap_or_else(|e| e.into_inner()).clone();
        let json = serde_json::to_string(&keys).map_err(|e| Status::internal(format!("auth: {e}")))?;
        Ok(Response::new(pb::PublicKeysResponse { json }))
    }

    async fn set_setting(
        &self,
        req: Request<pb::SetSettingRequest>,
    ) -> Result<Response<pb::SetSettingResponse>, Status> {
        self.handle_set_setting(req).await
    }

    async fn get_setting(
        &self,
        req: Request<pb::GetSettingRequest>,
    ) -> Result<Response<pb::GetSettingResponse>, Status> {
        self.handle_get_setting(req).await
    }

    async fn delete_setting(
        &self,
        req: Request<pb::DeleteSettingRequest>,
    ) -> Result<Response<pb::DeleteSettingResponse>, Status> {
        self.handle_delete_setting(req).await
    }

    async fn mint(&self, req: Request<pb::MintRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        let issuer = Self::caller(&req).is_some_and(|a| {
            a.namespace == micro_core::namespace::DEFAULT
                && a.kind == AccountType::Service
                && a.has_scope(micro_core::auth::ISSUER_SCOPE)
        });
        if !issuer {
            return Err(t(MicroStatus::new(
                Code::PermissionDenied,
                "auth",
                "only the users product signs app users' tokens",
            )));
        }
        let r = req.into_inner();
        micro_core::namespace::validate(&r.namespace).map_err(t)?;
        if r.namespace == micro_core::namespace::DEFAULT {
            return Err(t(MicroStatus::bad_request("auth", "the platform's own namespace has no app users")));
        }
        // An app user's id: what the users product makes (never `*`, which stands for a
        // whole namespace in revocations, nor an id of the platform's own).
        if r.id.is_empty() || r.id.len() > 64 || !r.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(t(MicroStatus::bad_request("auth", "an app user's id is 1-64 lowercase letters and digits")));
        }
        if r.revoke {
            self.inner.revocations.revoke(&r.namespace, Some(&r.id)).await.map_err(t)?;
            return Ok(Response::new(pb::TokenResponse::default()));
        }
        if r.name.chars().count() > 200 || r.name.chars().any(char::is_control) {
            return Err(t(MicroStatus::bad_request("auth", "a name is one line of at most 200 characters")));
        }
        let account = Account {
            id: r.id,
            name: r.name,
            kind: AccountType::App,
            namespace: r.namespace,
            scopes: vec![micro_core::auth::APP_SCOPE.into()],
            verified: r.verified,
            ..Default::default()
        };
        // App users' sessions end often (a new password, a session ended on another
        // node): the revocations are read afresh, so no token is signed that another
        // node's revocation voids.
        self.inner.revocations.follow().await.map_err(t)?;
        let (access_token, expiry) = self.sign(&account).map_err(t)?;
        Ok(Response::new(pb::TokenResponse {
            access_token,
            expiry,
            account: Some((&account).into()),
            ..Default::default()
        }))
    }
}
