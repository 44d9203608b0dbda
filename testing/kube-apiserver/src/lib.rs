//! A test Kubernetes API server for podnet's tests: the real wire format (JSON objects, lists,
//! watch streams, `Status` errors) for the resources podnet uses, served over HTTP or HTTPS
//! from a listener the test creates. It is a dev-dependency only, never part of the product.
//!
//! # Public API
//!
//! - [`ApiServer::start`]`(listener, cfg)` serves a new [`Store`] on a `std::net::TcpListener`
//!   from a thread with its own tokio runtime; [`ApiServer::start_with_store`] serves an
//!   existing store ("restart": objects and the resourceVersion counter carry over);
//!   [`ApiServer::addr`], [`ApiServer::url`], [`ApiServer::store`]; [`ApiServer::stop`]
//!   closes the listener, every connection and watch, and returns the store.
//! - [`ServerConfig`]: TLS ([`TlsConfig`]), bearer tokens, anonymous access, forbidden rules,
//!   bookmark interval, list page-size cap.
//! - [`Store`] (cheap to clone, thread-safe): `create` / `replace` / `patch` / `delete` /
//!   `get` / `list` objects as `serde_json::Value`; `compact` (watches and continue tokens
//!   from older resourceVersions get 410), `break_watches`, `set_history_limit`;
//!   `requests` / `clear_requests` (the request log, [`RequestRecord`]); `set_token`,
//!   `revoke_token`, `set_anonymous`; `forbid` / `allow` / `clear_forbidden`
//!   ([`ForbiddenRule`]); `register` more resources ([`ResourceDef`]).
//! - [`pki`]: [`Pki::generate`] (CA + server certificate with IP and `kubernetes.default.svc`
//!   SANs), [`Pki::client_cert`] (CN = user, O = group), [`write_kubeconfig`],
//!   [`write_in_cluster_files`].
//! - [`fixtures`]: real objects ([`fixtures::fixture`]) and [`fixtures::node`] /
//!   [`fixtures::pod`] to stamp out renamed, re-addressed copies.
//!
//! # Starting a server inside a network namespace
//!
//! The socket belongs to the namespace it was created in, so a test binds the listener while
//! it is inside the namespace (e.g. on a thread that entered it with `setns`) and hands it over:
//!
//! ```no_run
//! use podnet_test_apiserver::{ApiServer, ServerConfig};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // inside the netns
//! let server = ApiServer::start(listener, ServerConfig::default()).unwrap();
//! println!("{}", server.url());
//! let store = server.stop();
//! ```
//!
//! # Served
//!
//! `/api/v1/nodes[/{name}[/status]]`, `/api/v1/pods`,
//! `/api/v1/namespaces/{ns}/pods[/{name}[/status]]`, `/api/v1/namespaces[/{name}[/status]]`,
//! `/apis/networking.k8s.io/v1/networkpolicies`,
//! `/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]`, and the same shape
//! for registered resources; `/version`, `/healthz`, `/livez`, `/readyz`, and discovery
//! (`/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`). Verbs: get, list (resourceVersion and
//! resourceVersionMatch, limit/continue, label and field selectors), watch (see [`watch`]),
//! create, update, patch (merge, strategic merge, JSON patch), delete (with preconditions).
//!
//! # Knowingly not served
//!
//! Server-side apply (`application/apply-patch+yaml` gets 415), `managedFields` tracking,
//! protobuf and YAML bodies, `dryRun` (refused with 400), deletecollection (405), graceful
//! deletion and finalizers (deletes are immediate; deleting a namespace deletes its contents
//! at once), admission (e.g. creating in a namespace that does not exist succeeds), field
//! validation, Table output, HTTP/2, impersonation, the 410 continue token a real server
//! returns with an expired continue, and waiting for a too-new resourceVersion on list
//! (answered 504 at once).

pub mod auth;
mod discovery;
pub mod fixtures;
mod http;
mod ops;
pub mod patch;
pub mod pki;
pub mod resource;
pub mod selector;
mod server;
pub mod status;
mod store;
mod util;
pub mod watch;

pub use auth::{ForbiddenRule, RequestRecord, User};
pub use patch::PatchType;
pub use pki::{CaRef, ClientCert, Credentials, Pki, write_in_cluster_files, write_kubeconfig};
pub use resource::ResourceDef;
pub use server::{ApiServer, ServerConfig, TlsConfig};
pub use status::ApiError;
pub use store::Store;
