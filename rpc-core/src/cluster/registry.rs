//! Service registry: the [`Registry`] trait every backend implements, the [`Instance`] it
//! stores, the [`Lease`] that keeps an instance alive, and [`RegistryError`] (SEEDS §7).
//!
//! An instance registers under a service name with a time to live (TTL). Unless its lease is
//! renewed within the TTL (a heartbeat, usually by a [`Registration`] handle), the registry
//! forgets it; a client lists the live instances of a service, or watches them and is told of
//! every change without restarting.
//!
//! ```text
//!   server process                      registry                        client process
//!   Registration ── register(ttl) ──► lease 7: Arith @ 10.0.0.1:9000 ◄── list / watch("Arith")
//!                ── renew(7) every ttl/3 ─►   (expires ttl after the last renewal)
//!                ── deregister(7) on drop ─►  removed                 ──► Watcher::changed
//! ```
//!
//! Backends: [`MemoryRegistry`] (in-process, also usable as a static list) and
//! [`EtcdRegistry`] (etcd v3 through its JSON gateway). Liveness seen from the client side is
//! the [`HealthChecker`]'s job: a registered instance may still be dead.
//!
//! [`Registration`]: super::Registration
//! [`MemoryRegistry`]: super::MemoryRegistry
//! [`EtcdRegistry`]: super::EtcdRegistry
//! [`HealthChecker`]: super::HealthChecker

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::time::Duration;

use super::etcd::HttpError;
use super::watch::Watcher;

/// Longest service name or address accepted, in bytes.
pub const MAX_INSTANCE_FIELD_LEN: usize = 255;

/// One running copy of a service: where to reach it and what it says about itself.
///
/// Two instances are the same registration when their `service` and `addr` are equal;
/// registering that pair again replaces the earlier entry.
///
/// # Examples
///
/// ```
/// use rpc_core::cluster::Instance;
///
/// let arith = Instance::new("Arith", "127.0.0.1:9000").with_metadata("zone", "a").with_weight(3);
/// assert_eq!(arith.metadata["zone"], "a");
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Instance {
    /// The service name clients look up, e.g. `"Arith"`.
    pub service: String,
    /// Where the instance listens, `host:port`; what a client passes to `Client::dial`.
    pub addr: String,
    /// Free-form labels (zone, version, ...).
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic for weighted load balancing; 1 by default.
    pub weight: u32,
}

impl Instance {
    /// An instance of `service` at `addr`, with no metadata and weight 1.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            service: service.into(),
            addr: addr.into(),
            metadata: BTreeMap::new(),
            weight: 1,
        }
    }

    /// Adds (or replaces) one metadata label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the load-balancing weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Checks the fields every backend relies on: a service name and an address, each
    /// non-empty, at most [`MAX_INSTANCE_FIELD_LEN`] bytes, without `/` or control characters
    /// (they become parts of a key).
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidInstance`] naming the bad field.
    pub fn validate(&self) -> Result<(), RegistryError> {
        check_field("service name", &self.service)?;
        check_field("address", &self.addr)
    }
}

/// A granted lease: the handle to renew or end one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The backend's lease id.
    pub id: u64,
    /// The TTL actually granted; a backend may round the asked TTL up (etcd grants whole
    /// seconds, at least its minimum of about 2 s). Renew well within it.
    pub ttl: Duration,
}

/// A place where instances register and clients discover them.
///
/// Every method takes `&self` and may be called from any thread. Instances listed or watched
/// are sorted by address, so equal sets compare equal.
pub trait Registry: Send + Sync + fmt::Debug {
    /// Registers `instance` for `ttl` (Consul: register with a TTL check; etcd: lease grant
    /// and put). It stays listed until the lease expires or is deregistered.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidInstance`] for a bad instance or a zero TTL; backend errors
    /// ([`RegistryError::Unavailable`], [`RegistryError::Backend`]).
    fn register(&self, instance: &Instance, ttl: Duration) -> Result<Lease, RegistryError>;

    /// Renews `lease` for another TTL: the heartbeat.
    ///
    /// # Errors
    ///
    /// [`RegistryError::LeaseNotFound`] once the lease has expired or was deregistered (the
    /// instance is gone and must register again); backend errors.
    fn renew(&self, lease: Lease) -> Result<(), RegistryError>;

    /// Removes the registration held by `lease` at once.
    ///
    /// # Errors
    ///
    /// [`RegistryError::LeaseNotFound`] if it is already gone; backend errors.
    fn deregister(&self, lease: Lease) -> Result<(), RegistryError>;

    /// The live instances of `service`, sorted by address.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn list(&self, service: &str) -> Result<Vec<Instance>, RegistryError>;

    /// Watches `service`: the [`Watcher`] starts with the current instances and is told of
    /// every later change (registration, deregistration, expiry).
    ///
    /// # Errors
    ///
    /// Backend errors while taking the first snapshot.
    fn watch(&self, service: &str) -> Result<Watcher, RegistryError>;
}

/// Why a registry operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// The instance (or TTL) cannot be registered: an empty, too long or ill-formed field.
    InvalidInstance {
        /// What is wrong, naming the field.
        detail: String,
    },
    /// The lease has expired or was deregistered.
    LeaseNotFound {
        /// The lease id.
        lease: u64,
    },
    /// The backend could not be reached or did not answer in time.
    Unavailable {
        /// The backend's address.
        addr: String,
        /// The transport failure.
        source: HttpError,
    },
    /// The backend answered with an error of its own.
    Backend {
        /// The backend's error text.
        message: String,
    },
    /// The backend's answer could not be understood.
    Malformed {
        /// What was wrong with it.
        detail: String,
    },
    /// The registry behind a [`Watcher`] is gone; no more changes will come.
    Closed,
}

impl RegistryError {
    /// True for failures that may pass if tried again later (the backend was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::InvalidInstance { detail } => write!(f, "invalid instance: {detail}"),
            RegistryError::LeaseNotFound { lease } => write!(f, "lease {lease} not found"),
            RegistryError::Unavailable { addr, .. } => {
                write!(f, "registry at {addr} is unavailable")
            }
            RegistryError::Backend { message } => write!(f, "registry error: {message}"),
            RegistryError::Malformed { detail } => {
                write!(f, "malformed registry answer: {detail}")
            }
            RegistryError::Closed => f.write_str("registry closed"),
        }
    }
}

impl Error for RegistryError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RegistryError::Unavailable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks a TTL is usable: not zero.
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), RegistryError> {
    if ttl.is_zero() {
        return Err(RegistryError::InvalidInstance {
            detail: "a ttl of zero".to_owned(),
        });
    }
    Ok(())
}

fn check_field(what: &str, value: &str) -> Result<(), RegistryError> {
    let problem = if value.is_empty() {
        Some("is empty".to_owned())
    } else if value.len() > MAX_INSTANCE_FIELD_LEN {
        Some(format!(
            "has {} bytes, over the {MAX_INSTANCE_FIELD_LEN}-byte limit",
            value.len()
        ))
    } else if value.chars().any(|c| c == '/' || c.is_control()) {
        Some("contains `/` or a control character".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(RegistryError::InvalidInstance {
            detail: format!("{what} `{}` {problem}", value.escape_debug()),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_fields_are_validated() {
        assert!(Instance::new("Arith", "127.0.0.1:1").validate().is_ok());
        for bad in [
            Instance::new("", "127.0.0.1:1"),
            Instance::new("Arith", ""),
            Instance::new("Ar/ith", "127.0.0.1:1"),
            Instance::new("Arith", "a\nb"),
            Instance::new("x".repeat(256), "127.0.0.1:1"),
        ] {
            let err = bad.validate().expect_err("a bad instance is refused");
            assert!(
                matches!(err, RegistryError::InvalidInstance { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn registry_types_are_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<Instance>();
        both::<RegistryError>();
        both::<Lease>();
    }
}
