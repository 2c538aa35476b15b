//! kiln-server owns carrying out the Image Builder API's operations on kiln's state and running
//! pipeline executions: the users of the API with their policies and access keys (secrets
//! sealed at rest), the credential store and the operations behind kiln-api's router
//! (components, image recipes, infrastructure and distribution configurations, image pipelines,
//! images, tags, scan findings, lifecycle policies and their executions), client-token
//! idempotency and pagination, the worker pools (inside `kiln serve` or alone in `kiln worker`
//! processes) that claim pipeline executions from kiln-store's job queue and build them with
//! kiln-build, and the runs of lifecycle policies. It must not know HTTP details (signatures,
//! paths, error encoding), which stay in kiln-api; it gets authenticated, authorised calls as
//! JSON and answers JSON or an [`kiln_api::ApiError`].

pub mod coordinator;
mod credentials;
mod lifecycle;
pub mod monitor;
pub(crate) mod ops;
mod pool;
pub mod scheduler;
pub mod secrets;
mod serve;
mod users;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_api::ApiError;
use kiln_api::policy::Policy;
use kiln_api::server::{Call, Caller, Credential, Credentials, Operations};
use kiln_store::Store;

pub use credentials::CREDENTIAL_TTL;
pub use lifecycle::{LIFECYCLE_INTERVAL, LifecycleRun, run_due_lifecycle_policies, run_lifecycle_policies};
pub use pool::{WorkerOptions, work};
pub use secrets::SecretBox;
pub use serve::{ServeOptions, serve};
pub use users::{NewUserKey, UserSummary, create_user, delete_user, list_users};
pub use worker::{DEFAULT_LEASE, EXECUTION_JOB, INTERRUPTED_REASON};

/// The region in the ARNs the server hands out.
pub const REGION: &str = kiln_model::LOCAL_REGION;

/// Why the server could not do something (outside of API calls, which answer
/// [`ApiError`]s).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// A policy document is not valid; the message has the JSON path.
    #[error("invalid policy: {0}")]
    Policy(kiln_api::policy::PolicyError),
    #[error("{0}")]
    Invalid(String),
    /// The secret key file or a sealed secret is not usable.
    #[error("{0}")]
    Secret(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<kiln_api::policy::PolicyError> for ServerError {
    fn from(e: kiln_api::policy::PolicyError) -> Self {
        ServerError::Policy(e)
    }
}

/// kiln's state as the API server sees it; clones share everything.
#[derive(Clone, Debug)]
pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    home: PathBuf,
    store: Store,
    secrets: SecretBox,
    /// Recently read access keys (see `credentials`).
    credentials: credentials::CredentialCache,
    /// Wakes idle workers when an execution is queued.
    queued: tokio::sync::Notify,
    /// The cancellation tokens of the builds running in this process, by image ARN.
    running: Mutex<HashMap<String, kiln_host::Cancel>>,
    shutting_down: AtomicBool,
    /// This process among the servers on one state (see `coordinator`).
    node: String,
    /// Whether this server holds the coordinator role.
    coordinator: AtomicBool,
}

impl Server {
    /// The server over `KILN_HOME` (the state database and the secret key under it).
    pub async fn open(home: &Path) -> Result<Server, ServerError> {
        let store = Store::open_default(home).await?;
        Server::with_store(home, store)
    }

    /// The server over an open store (tests give an in-memory one).
    pub fn with_store(home: &Path, store: Store) -> Result<Server, ServerError> {
        let secrets = SecretBox::open_or_create(&secrets::key_path(home))?;
        Ok(Server {
            inner: Arc::new(Inner {
                home: home.to_path_buf(),
                store,
                secrets,
                credentials: credentials::CredentialCache::default(),
                queued: tokio::sync::Notify::new(),
                running: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                node: coordinator::node_name(),
                coordinator: AtomicBool::new(false),
            }),
        })
    }

    /// The state database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// `KILN_HOME`.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, kiln_host::Cancel>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop taking jobs and stop the running builds: each image FAILED with
    /// [`worker::INTERRUPTED_REASON`], then its build cancelled. In that order because a
    /// cancelled build records CANCELLED on an image still in progress, and a build the server
    /// interrupted was not cancelled by anyone.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let running: Vec<(String, kiln_host::Cancel)> =
            self.running().iter().map(|(arn, c)| (arn.clone(), c.clone())).collect();
        for (arn, cancel) in running {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let server = self.clone();
                    rt.spawn(async move {
                        worker::fail_image(&server, &arn, worker::INTERRUPTED_REASON).await;
                        cancel.cancel();
                    });
                }
                // Outside a runtime (no store calls possible here): stopping matters most.
                Err(_) => cancel.cancel(),
            }
        }
        self.inner.queued.notify_waiters();
    }

    /// Fails the executions a stopped server left behind (expired leases); `kiln serve`
    /// does this at start-up and every lease period. Returns the images failed.
    pub async fn recover(&self) -> Result<Vec<String>, ServerError> {
        Ok(worker::reap(self).await?)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }
}

impl Credentials for Server {
    async fn lookup(
        &self,
        access_key_id: &str,
        security_token: Option<&str>,
    ) -> Result<Option<Credential>, ApiError> {
        // kiln issues no temporary credentials.
        if security_token.is_some() {
            return Ok(None);
        }
        if let Some(credential) = self.inner.credentials.get(access_key_id) {
            return Ok(Some(credential));
        }
        let found = self.store().api_credential(access_key_id).await.map_err(|e| {
            tracing::error!("credential lookup: {e}");
            ApiError::ServiceUnavailable("The credential store is not available.".into())
        })?;
        let Some(found) = found else { return Ok(None) };
        let secret = self.inner.secrets.open(access_key_id, &found.secret_sealed).map_err(|e| {
            tracing::error!("{e}");
            ApiError::Service("The access key's secret cannot be read by this server.".into())
        })?;
        let policy = Policy::parse(found.user.policy_name.clone(), &found.user.policy).map_err(|e| {
            tracing::error!("stored policy of user {}: {e}", found.user.name);
            ApiError::Service("The caller's stored policy is not valid.".into())
        })?;
        let credential = Credential {
            secret_access_key: secret,
            caller: Caller {
                access_key_id: access_key_id.to_owned(),
                principal_arn: users::principal_arn(&found.user.account, &found.user.name),
                account_id: found.user.account,
                policies: vec![policy],
            },
        };
        self.inner.credentials.insert(access_key_id, &found.user.name, credential.clone());
        Ok(Some(credential))
    }
}

impl Operations for Server {
    async fn call(&self, call: Call) -> Result<serde_json::Value, ApiError> {
        ops::dispatch(self, call).await
    }
}
